//! The file system's core: a namespace of inodes, directory entries and extents
//! stored as engine keys, with no FUSE types in it (the FUSE adapter in `crate::fuse`
//! is a thin translation). See `keys` for the layout, `attr` for the records,
//! `locks` for what is locked when, `change` for how every change is written, `data` and `extents` for file content, `xattr`
//! for extended attributes, and `kv` for the key-value view (keys as paths).

pub mod attr;
mod change;
mod data;
pub mod error;
pub mod extents;
mod file;
mod follow;
pub mod keys;
mod kv;
mod locks;
pub mod namespace;
mod xattr;

pub use attr::{Attr, Kind};
pub use data::{INLINE_MAX, MAX_FILE_SIZE, READAHEAD_MAX};
pub use error::{FsError, FsResult};
pub use follow::{Invalidation, PageCache};
pub use kv::{count_files, split_key};
pub use namespace::{
    AtimeMode, DirEntry, FsStats, Namespace, RenameFlags, SetAttr, DEFAULT_FILE_BUFFER_BYTES,
};
pub use xattr::{XattrFlags, XATTR_NAME_MAX, XATTR_SIZE_MAX};
