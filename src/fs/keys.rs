//! How the namespace lays out its records as engine keys (namespace layout 2).
//!
//! Every key of the file system starts with byte 0 and a record tag, then big-endian
//! numbers, so each kind of record is one contiguous key range and a directory's
//! entries, or a file's extents, are adjacent in the index and in sorted runs:
//!
//! | key                                   | metadata          | value               |
//! |---------------------------------------|-------------------|---------------------|
//! | `\0S`                                 | superblock        | empty               |
//! | `\0i` ino                             | [`Attr`] record   | inline content, symlink target, or empty |
//! | `\0d` parent-ino name                 | [`Dirent`]        | empty               |
//! | `\0x` ino offset                      | extent (skip, len)| extent data         |
//! | `\0o` ino                             | none              | empty               |
//! | `\0a` ino name                        | xattr record      | a large xattr value |
//!
//! - **inode** (`\0i`): attributes of one file, directory, symlink or special file,
//!   addressed by its number, which never changes. Small files keep their content in
//!   the inode's value ("inline").
//! - **directory entry** (`\0d`): one name in one directory, naming an inode. Renaming
//!   a directory rewrites one entry, whatever lies below it.
//! - **extent** (`\0x`): a piece of a large file's content covering file bytes
//!   `offset .. offset + len`, which are bytes `skip .. skip + len` of the value. A
//!   file's extents never overlap: an overwrite trims the extents it covers by
//!   rewriting their metadata (see `extents`), not their data.
//! - **extended attribute** (`\0a`): one name of one inode; see `xattr`.
//! - **orphan** (`\0o`): an inode whose last name is gone while it was still open; its
//!   content is deleted at last close, or when the store is next mounted.
//!
//! [`Attr`]: super::attr::Attr
//! [`Dirent`]: super::attr::Dirent

/// Key of the superblock.
pub const SUPER_KEY: &[u8] = b"\0S";
/// Key of the superblock of namespace layout 1 (paths as keys), no longer read.
pub const LAYOUT1_SUPER_KEY: &[u8] = b"\0s";
const INODE_TAG: &[u8] = b"\0i";
const DIRENT_TAG: &[u8] = b"\0d";
const EXTENT_TAG: &[u8] = b"\0x";
const ORPHAN_TAG: &[u8] = b"\0o";
const XATTR_TAG: &[u8] = b"\0a";

pub const ROOT_INO: u64 = 1;
/// First inode number handed out by the allocator.
pub const FIRST_INO: u64 = 2;
/// Longest name of one directory entry.
pub const NAME_MAX: usize = 255;

fn tagged(tag: &[u8], numbers: &[u64], tail: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tag.len() + 8 * numbers.len() + tail.len());
    k.extend_from_slice(tag);
    for n in numbers {
        k.extend_from_slice(&n.to_be_bytes());
    }
    k.extend_from_slice(tail);
    k
}

pub fn inode_key(ino: u64) -> Vec<u8> {
    tagged(INODE_TAG, &[ino], &[])
}

/// Prefix of every inode record.
pub fn inode_prefix() -> Vec<u8> {
    INODE_TAG.to_vec()
}

/// Key of entry `name` of directory `parent`.
pub fn dirent_key(parent: u64, name: &[u8]) -> Vec<u8> {
    tagged(DIRENT_TAG, &[parent], name)
}

/// Prefix of the entries of every directory.
pub fn all_dirents_prefix() -> Vec<u8> {
    DIRENT_TAG.to_vec()
}

/// Prefix of every entry of directory `parent`.
pub fn dirent_prefix(parent: u64) -> Vec<u8> {
    tagged(DIRENT_TAG, &[parent], &[])
}

/// Key of the extent of `ino` that starts at file offset `offset`.
pub fn extent_key(ino: u64, offset: u64) -> Vec<u8> {
    tagged(EXTENT_TAG, &[ino, offset], &[])
}

/// Prefix of every extent of `ino`.
pub fn extent_prefix(ino: u64) -> Vec<u8> {
    tagged(EXTENT_TAG, &[ino], &[])
}

pub fn orphan_key(ino: u64) -> Vec<u8> {
    tagged(ORPHAN_TAG, &[ino], &[])
}

/// Key of extended attribute `name` of `ino`.
pub fn xattr_key(ino: u64, name: &[u8]) -> Vec<u8> {
    tagged(XATTR_TAG, &[ino], name)
}

/// Prefix of every extended attribute of `ino`.
pub fn xattr_prefix(ino: u64) -> Vec<u8> {
    tagged(XATTR_TAG, &[ino], &[])
}

/// Name of an extended attribute key of `ino`.
pub fn xattr_name(ino: u64, key: &[u8]) -> Option<&[u8]> {
    let n = XATTR_TAG.len() + 8;
    (key.len() > n && key[..n] == xattr_prefix(ino)[..]).then(|| &key[n..])
}

/// Prefix of every orphan record.
pub fn orphan_prefix() -> Vec<u8> {
    ORPHAN_TAG.to_vec()
}

fn number_at(key: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(at..at + 8)?.try_into().ok()?))
}

/// File offset of an extent key of `ino`.
pub fn extent_offset(ino: u64, key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(extent_prefix(ino).as_slice())?;
    (rest.len() == 8).then(|| number_at(rest, 0)).flatten()
}

/// Name of a directory entry key of `parent`.
pub fn dirent_name(parent: u64, key: &[u8]) -> Option<&[u8]> {
    let prefix_len = DIRENT_TAG.len() + 8;
    (key.len() > prefix_len && key[..prefix_len] == dirent_prefix(parent)[..])
        .then(|| &key[prefix_len..])
}

/// Inode number of an orphan key.
pub fn orphan_ino(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(ORPHAN_TAG)?;
    (rest.len() == 8).then(|| number_at(rest, 0)).flatten()
}

/// What a file-system key records, and for which inode.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyOf<'a> {
    Super,
    Inode(u64),
    Dirent {
        parent: u64,
        name: &'a [u8],
    },
    Extent {
        ino: u64,
        offset: u64,
    },
    Xattr {
        ino: u64,
        name: &'a [u8],
    },
    Orphan(u64),
    /// Not a key of this layout.
    Other,
}

/// Classify a key of the namespace.
pub fn key_of(key: &[u8]) -> KeyOf<'_> {
    if key == SUPER_KEY {
        return KeyOf::Super;
    }
    let Some(tag) = key.get(..2) else {
        return KeyOf::Other;
    };
    let Some(ino) = number_at(key, 2) else {
        return KeyOf::Other;
    };
    let rest = &key[10..];
    match tag {
        t if t == INODE_TAG && rest.is_empty() => KeyOf::Inode(ino),
        t if t == DIRENT_TAG && !rest.is_empty() => KeyOf::Dirent {
            parent: ino,
            name: rest,
        },
        t if t == EXTENT_TAG && rest.len() == 8 => match number_at(rest, 0) {
            Some(offset) => KeyOf::Extent { ino, offset },
            None => KeyOf::Other,
        },
        t if t == XATTR_TAG && !rest.is_empty() => KeyOf::Xattr { ino, name: rest },
        t if t == ORPHAN_TAG && rest.is_empty() => KeyOf::Orphan(ino),
        _ => KeyOf::Other,
    }
}

/// Whether a key belongs to the file system (every such key starts with byte 0).
pub fn is_reserved(key: &[u8]) -> bool {
    key.first() == Some(&0)
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
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_classify_back_to_what_made_them() {
        assert_eq!(key_of(SUPER_KEY), KeyOf::Super);
        assert_eq!(key_of(&inode_key(7)), KeyOf::Inode(7));
        assert_eq!(
            key_of(&dirent_key(3, b"name")),
            KeyOf::Dirent {
                parent: 3,
                name: b"name"
            }
        );
        assert_eq!(
            key_of(&extent_key(9, 1 << 20)),
            KeyOf::Extent {
                ino: 9,
                offset: 1 << 20
            }
        );
        assert_eq!(
            key_of(&xattr_key(4, b"user.a")),
            KeyOf::Xattr {
                ino: 4,
                name: b"user.a"
            }
        );
        assert_eq!(key_of(&orphan_key(5)), KeyOf::Orphan(5));
        for junk in [
            &b""[..],
            b"\0",
            b"\0i12",
            b"plain",
            b"\0q\0\0\0\0\0\0\0\x01",
        ] {
            assert_eq!(key_of(junk), KeyOf::Other, "{junk:?}");
        }
    }

    #[test]
    fn keys_sort_and_parse() {
        assert!(extent_key(5, 9) < extent_key(5, 10));
        assert!(extent_key(5, u64::MAX) < extent_key(6, 0));
        assert_eq!(extent_offset(5, &extent_key(5, 4096)), Some(4096));
        assert_eq!(extent_offset(6, &extent_key(5, 4096)), None);
        assert!(dirent_key(3, b"a") < dirent_key(3, b"b"));
        assert!(dirent_key(3, b"zzz") < dirent_key(4, b""));
        assert_eq!(
            dirent_name(3, &dirent_key(3, b"x.txt")),
            Some(&b"x.txt"[..])
        );
        assert_eq!(dirent_name(4, &dirent_key(3, b"x.txt")), None);
        assert_eq!(orphan_ino(&orphan_key(77)), Some(77));
        assert_eq!(orphan_ino(&inode_key(77)), None);
        assert_eq!(
            xattr_name(7, &xattr_key(7, b"user.a")),
            Some(&b"user.a"[..])
        );
        assert_eq!(xattr_name(8, &xattr_key(7, b"user.a")), None);
        assert!(xattr_key(7, b"zz") < xattr_key(8, b""));
        for k in [
            inode_key(1),
            dirent_key(1, b"a"),
            extent_key(1, 0),
            orphan_key(1),
        ] {
            assert!(is_reserved(&k));
            assert!(k.starts_with(&[0]));
        }
        assert_eq!(check_name(b".."), Err(NameError::Invalid));
        assert_eq!(check_name(&[b'x'; 256]), Err(NameError::TooLong));
        assert!(check_name(&[b'x'; 255]).is_ok());
        assert!(check_name(b"ok.txt").is_ok());
    }
}
