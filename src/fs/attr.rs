//! The records of the namespace kept in the engine's per-key metadata (so they are
//! in memory and read without a request): inode attributes, directory entries,
//! extent bounds and the superblock. All numbers are little-endian.
//!
//! ```text
//! inode     version u8 = 2 | kind u8 | flags u8 (bit 0: content in extents)
//!           | perm u16 | uid u32 | gid u32 | nlink u32 | rdev u64 | size u64
//!           | parent u64 | atime_ns i64 | mtime_ns i64 | ctime_ns i64      (65 bytes)
//! dirent    ino u64 | kind u8                                              (9 bytes)
//! extent    skip u32 | len u32                                             (8 bytes)
//! super     layout u8 = 2 | next_ino u64                                   (9 bytes)
//! ```
//! Kinds: 1 file, 2 directory, 3 symlink, 4 FIFO, 5 socket, 6 character device,
//! 7 block device. `parent` is the directory holding a directory (0 for other kinds,
//! which may have several names).
//!
//! Decoders bound every length a record claims by what it can hold: a file without
//! extents (its content inline in the inode's value) is at most [`INLINE_MAX`] bytes
//! and a symlink's target at most [`SYMLINK_MAX`]; a record claiming more is
//! corrupt, so no caller sizes a buffer from a hostile number.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::data::INLINE_MAX;
use crate::format::codec::{PutLe, Reader};
use crate::format::{FormatError, FormatResult};

pub const ATTR_VERSION: u8 = 2;
pub const ENCODED_LEN: usize = 65;
/// Namespace layout written by this version.
pub const LAYOUT: u8 = 2;
/// Flag: the file's content lives in extents, not in the inode's value.
const FLAG_EXTENTS: u8 = 1;
/// Longest symlink target (`PATH_MAX` less its terminating zero).
pub const SYMLINK_MAX: u64 = 4095;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::Socket => 5,
            Kind::CharDev => 6,
            Kind::BlockDev => 7,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// Attributes of one inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u64,
    pub size: u64,
    /// The directory holding this directory (0 for other kinds).
    pub parent: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Content is stored in extents (large files), not inline.
    pub extents: bool,
}

fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

fn from_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

impl Attr {
    /// Fresh attributes of a new inode (one name, empty).
    pub fn new(ino: u64, kind: Kind, perm: u16, owner: (u32, u32), time: SystemTime) -> Attr {
        Attr {
            ino,
            kind,
            perm: perm & 0o7777,
            uid: owner.0,
            gid: owner.1,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            rdev: 0,
            size: 0,
            parent: 0,
            atime: time,
            mtime: time,
            ctime: time,
            extents: false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.put_u8(ATTR_VERSION);
        out.put_u8(self.kind.code());
        out.put_u8(if self.extents { FLAG_EXTENTS } else { 0 });
        out.put_u16(self.perm);
        out.put_u32(self.uid);
        out.put_u32(self.gid);
        out.put_u32(self.nlink);
        out.put_u64(self.rdev);
        out.put_u64(self.size);
        out.put_u64(self.parent);
        out.put_u64(to_ns(self.atime) as u64);
        out.put_u64(to_ns(self.mtime) as u64);
        out.put_u64(to_ns(self.ctime) as u64);
        out
    }

    pub fn decode(ino: u64, data: &[u8]) -> FormatResult<Attr> {
        let mut r = Reader::new(data, "inode attributes");
        let version = r.u8()?;
        if version != ATTR_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "inode attributes",
                version: version as u16,
            });
        }
        let code = r.u8()?;
        let kind =
            Kind::from_code(code).ok_or_else(|| r.invalid(format!("unknown kind {code}")))?;
        let flags = r.u8()?;
        let attr = Attr {
            ino,
            kind,
            extents: flags & FLAG_EXTENTS != 0,
            perm: r.u16()? & 0o7777,
            uid: r.u32()?,
            gid: r.u32()?,
            nlink: r.u32()?,
            rdev: r.u64()?,
            size: r.u64()?,
            parent: r.u64()?,
            atime: from_ns(r.u64()? as i64),
            mtime: from_ns(r.u64()? as i64),
            ctime: from_ns(r.u64()? as i64),
        };
        if r.remaining() != 0 {
            return Err(r.invalid("trailing bytes"));
        }
        if kind == Kind::File && !attr.extents && attr.size > INLINE_MAX {
            return Err(r.invalid(format!(
                "inline file of {} bytes (at most {INLINE_MAX})",
                attr.size
            )));
        }
        if kind == Kind::Symlink && attr.size > SYMLINK_MAX {
            return Err(r.invalid(format!(
                "symlink target of {} bytes (at most {SYMLINK_MAX})",
                attr.size
            )));
        }
        Ok(attr)
    }
}

/// One directory entry's record: the inode it names and that inode's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent {
    pub ino: u64,
    pub kind: Kind,
}

impl Dirent {
    pub const ENCODED_LEN: usize = 9;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_LEN);
        out.put_u64(self.ino);
        out.put_u8(self.kind.code());
        out
    }

    pub fn decode(data: &[u8]) -> FormatResult<Dirent> {
        let mut r = Reader::new(data, "directory entry");
        let ino = r.u64()?;
        let code = r.u8()?;
        let kind =
            Kind::from_code(code).ok_or_else(|| r.invalid(format!("unknown kind {code}")))?;
        if r.remaining() != 0 {
            return Err(r.invalid("trailing bytes"));
        }
        Ok(Dirent { ino, kind })
    }
}

/// Which bytes of an extent's value are the file's: `skip .. skip + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentMeta {
    pub skip: u32,
    pub len: u32,
}

impl ExtentMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8);
        out.put_u32(self.skip);
        out.put_u32(self.len);
        out
    }

    /// Decode, checking the bounds against the value's length.
    pub fn decode(data: &[u8], value_len: u32) -> FormatResult<ExtentMeta> {
        let mut r = Reader::new(data, "extent");
        let m = ExtentMeta {
            skip: r.u32()?,
            len: r.u32()?,
        };
        if r.remaining() != 0 {
            return Err(r.invalid("trailing bytes"));
        }
        if m.len == 0 || m.skip as u64 + m.len as u64 > value_len as u64 {
            return Err(r.invalid(format!(
                "bytes {}+{} outside a value of {value_len}",
                m.skip, m.len
            )));
        }
        Ok(m)
    }
}

/// The superblock: layout version and the next unreserved inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Super {
    pub next_ino: u64,
}

impl Super {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        out.put_u8(LAYOUT);
        out.put_u64(self.next_ino);
        out
    }

    pub fn decode(data: &[u8]) -> FormatResult<Super> {
        let mut r = Reader::new(data, "superblock");
        let layout = r.u8()?;
        if layout != LAYOUT {
            return Err(FormatError::UnsupportedVersion {
                what: "namespace layout",
                version: layout as u16,
            });
        }
        let s = Super { next_ino: r.u64()? };
        if r.remaining() != 0 {
            return Err(r.invalid("trailing bytes"));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let a = Attr {
            ino: 77,
            kind: Kind::CharDev,
            perm: 0o1755,
            uid: 1000,
            gid: 100,
            nlink: 3,
            rdev: 0x0801,
            size: 1 << 40,
            parent: 9,
            atime: UNIX_EPOCH + Duration::new(1_600_000_000, 7),
            mtime: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            ctime: UNIX_EPOCH - Duration::from_secs(5),
            extents: true,
        };
        let e = a.encode();
        assert_eq!(e.len(), ENCODED_LEN);
        assert_eq!(Attr::decode(77, &e).unwrap(), a);
        for n in 0..e.len() {
            assert!(Attr::decode(77, &e[..n]).is_err());
        }
        let d = Dirent {
            ino: 5,
            kind: Kind::Dir,
        };
        assert_eq!(Dirent::decode(&d.encode()).unwrap(), d);
        assert!(Dirent::decode(&d.encode()[..8]).is_err());
        let x = ExtentMeta { skip: 4, len: 10 };
        assert_eq!(ExtentMeta::decode(&x.encode(), 14).unwrap(), x);
        assert!(ExtentMeta::decode(&x.encode(), 13).is_err());
        assert!(ExtentMeta::decode(&ExtentMeta { skip: 0, len: 0 }.encode(), 13).is_err());
        let s = Super { next_ino: 1 << 20 };
        assert_eq!(Super::decode(&s.encode()).unwrap(), s);
        assert!(Super::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    fn inline_file(size: u64) -> Attr {
        Attr {
            size,
            ..Attr::new(5, Kind::File, 0o644, (0, 0), UNIX_EPOCH)
        }
    }

    /// A hostile record: an inline file claiming a terabyte. Decoding it is an error,
    /// so nothing sizes a buffer by it.
    #[test]
    fn an_inline_file_claiming_more_than_inline_max_is_corrupt() {
        let err = Attr::decode(5, &inline_file(1 << 40).encode()).unwrap_err();
        assert!(
            matches!(err, FormatError::Invalid { .. }) && err.to_string().contains("inline"),
            "{err}"
        );
        assert!(Attr::decode(5, &inline_file(INLINE_MAX + 1).encode()).is_err());
        assert_eq!(
            Attr::decode(5, &inline_file(INLINE_MAX).encode()).unwrap(),
            inline_file(INLINE_MAX)
        );
        // The same size in extents is a large file, as it should be.
        let large = Attr {
            extents: true,
            ..inline_file(1 << 40)
        };
        assert_eq!(Attr::decode(5, &large.encode()).unwrap(), large);
        // Sizes of kinds with no content are not lengths of anything read.
        let dir = Attr {
            size: 1 << 40,
            ..Attr::new(5, Kind::Dir, 0o755, (0, 0), UNIX_EPOCH)
        };
        assert_eq!(Attr::decode(5, &dir.encode()).unwrap(), dir);
    }

    #[test]
    fn a_symlink_claiming_a_target_longer_than_symlink_max_is_corrupt() {
        let link = |size| Attr {
            size,
            ..Attr::new(5, Kind::Symlink, 0o777, (0, 0), UNIX_EPOCH)
        };
        assert_eq!(
            Attr::decode(5, &link(SYMLINK_MAX).encode()).unwrap(),
            link(SYMLINK_MAX)
        );
        assert!(Attr::decode(5, &link(SYMLINK_MAX + 1).encode()).is_err());
        assert!(Attr::decode(5, &link(u64::MAX).encode()).is_err());
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::File),
            Just(Kind::Dir),
            Just(Kind::Symlink),
            Just(Kind::Fifo),
            Just(Kind::Socket),
            Just(Kind::CharDev),
            Just(Kind::BlockDev),
        ]
    }

    proptest! {
        /// Well-formed records with any numbers: each decodes to itself or is
        /// refused, and what decodes claims no length beyond its bound.
        #[test]
        fn decoded_lengths_are_bounded(
            kind in kind(),
            extents in any::<bool>(),
            size in prop_oneof![0..2 * INLINE_MAX, any::<u64>()],
            nlink in any::<u32>(),
        ) {
            let a = Attr {
                extents,
                nlink,
                size,
                ..Attr::new(9, kind, 0o640, (1, 2), UNIX_EPOCH)
            };
            match Attr::decode(9, &a.encode()) {
                Ok(d) => {
                    prop_assert_eq!(d, a);
                    prop_assert!(d.kind != Kind::File || d.extents || d.size <= INLINE_MAX);
                    prop_assert!(d.kind != Kind::Symlink || d.size <= SYMLINK_MAX);
                }
                Err(_) => prop_assert!(
                    (kind == Kind::File && !extents && size > INLINE_MAX)
                        || (kind == Kind::Symlink && size > SYMLINK_MAX)
                ),
            }
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..80), len in any::<u32>()) {
            let _ = Attr::decode(1, &data);
            let _ = Dirent::decode(&data);
            let _ = ExtentMeta::decode(&data, len);
            let _ = Super::decode(&data);
        }
    }
}
