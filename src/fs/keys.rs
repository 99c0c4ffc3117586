//! How the namespace maps onto engine keys.
//!
//! - A file, directory or symlink at path `a/b/c` (relative to the mount root, no
//!   leading or trailing `/`) is the key `a/b/c`. Its metadata blob holds its
//!   attributes; its value is the file content (small files), the symlink target, or
//!   empty (directories and blocked files).
//! - A directory also exists implicitly when any key starts with `a/b/` (keys written
//!   with `kvfs put` create no directory keys).
//! - A large file's content is split into blocks of [`BLOCK_SIZE`] bytes under
//!   `\0b` + ino (8 bytes, big-endian) + block number (8 bytes, big-endian), so that
//!   overwriting a few bytes rewrites one block, and renaming the file moves no data.
//! - `\0s` holds the next inode number in its metadata.
//!
//! Keys starting with byte 0 are reserved: paths never contain NUL.

pub const BLOCK_SIZE: u64 = 4096;
/// Files up to this size keep their content in the path key's value.
pub const INLINE_MAX: u64 = 64 * 1024;
/// Key of the superblock record (next inode number).
pub const SUPER_KEY: &[u8] = b"\0s";
const BLOCK_PREFIX: &[u8] = b"\0b";
/// Inode numbers from hashing a path have this bit set; allocated ones do not.
pub const HASHED_INO_BIT: u64 = 1 << 63;
pub const ROOT_INO: u64 = 1;
/// First inode number handed out by the allocator.
pub const FIRST_INO: u64 = 2;

/// Key of block `n` of inode `ino`.
pub fn block_key(ino: u64, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(BLOCK_PREFIX);
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// Prefix of all block keys of inode `ino`.
pub fn block_prefix(ino: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.extend_from_slice(BLOCK_PREFIX);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Block number of a block key of `ino`.
pub fn block_number(ino: u64, key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(block_prefix(ino).as_slice())?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// Whether a key is reserved (not a path).
pub fn is_reserved(key: &[u8]) -> bool {
    key.first() == Some(&0)
}

/// `parent/name`, or `name` at the root (whose path is empty).
pub fn child_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// The key prefix of everything inside directory `path` (`path/`, or all paths).
pub fn dir_prefix(path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        Vec::new()
    } else {
        let mut p = path.to_vec();
        p.push(b'/');
        p
    }
}

/// Parent path and last component of a non-root path.
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// A stable inode number for a path that has none recorded (FNV-1a, top bit set).
pub fn hashed_ino(path: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | HASHED_INO_BIT
}

/// Why a name cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum NameError {
    Invalid,
    TooLong,
}

/// Check a single path component.
pub fn check_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(NameError::Invalid);
    }
    if name.len() > 255 {
        return Err(NameError::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_keys() {
        assert_eq!(child_path(b"", b"a"), b"a");
        assert_eq!(child_path(b"a/b", b"c"), b"a/b/c");
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"a"), (&b""[..], &b"a"[..]));
        assert_eq!(dir_prefix(b""), b"");
        assert_eq!(dir_prefix(b"a"), b"a/");
        let k = block_key(5, 9);
        assert!(is_reserved(&k));
        assert_eq!(block_number(5, &k), Some(9));
        assert_eq!(block_number(6, &k), None);
        assert!(block_key(5, 9) < block_key(5, 10));
        assert!(block_key(5, u64::MAX) < block_key(6, 0));
        assert_ne!(hashed_ino(b"a") & HASHED_INO_BIT, 0);
        assert_eq!(hashed_ino(b"a/b"), hashed_ino(b"a/b"));
        assert_eq!(check_name(b".."), Err(NameError::Invalid));
        assert_eq!(check_name(&[b'x'; 256]), Err(NameError::TooLong));
        assert!(check_name(b"ok.txt").is_ok());
    }
}
