//! Byte formats of the objects kvfs writes: segments, runs, checkpoints, manifests,
//! index table parts (not yet written by the engine), and the names it gives them.
//! docs/FORMAT.md documents every layout byte by byte.
//!
//! Every decoder takes untrusted bytes and returns a [`FormatError`] on anything it
//! does not expect; none of them panics on any input (property-tested).

pub mod bloom;
pub mod checkpoint;
pub mod codec;
pub mod encoding;
pub mod envelope;
pub mod manifest;
pub mod names;
pub mod run;
pub mod segment;
pub mod table;

/// Why an object could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{what}: truncated (needed {needed} more bytes at offset {offset})")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
    },
    #[error("{what}: bad magic number (not a kvfs object)")]
    BadMagic { what: &'static str },
    #[error("{what}: unsupported format version {version}")]
    UnsupportedVersion { what: &'static str, version: u16 },
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{what}: chunk {chunk} failed authentication (a wrong key, a changed byte, or an object stored under another name)")]
    Authentication { what: &'static str, chunk: u64 },
    #[error("{what}: the header failed authentication (not sealed with this store's key, or stored under another name)")]
    HeaderAuthentication { what: &'static str },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

pub type FormatResult<T> = Result<T, FormatError>;
