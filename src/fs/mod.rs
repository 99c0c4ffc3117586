//! The file system's core: a namespace of files, directories and symlinks stored as
//! engine keys, with no FUSE types in it (the FUSE adapter in `crate::fuse` is a thin
//! translation). See `keys` for the key layout and `attr` for the attributes kept in
//! each key's metadata.

pub mod attr;
pub mod error;
pub mod keys;
pub mod namespace;

pub use attr::{Attr, Kind};
pub use error::{FsError, FsResult};
pub use namespace::{DirEntry, FsStats, Namespace, RenameFlags, SetAttr};
