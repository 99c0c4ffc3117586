//! File attributes, stored as the engine's per-key metadata blob.
//!
//! ```text
//! version u8 = 1 | kind u8 (1 file, 2 directory, 3 symlink) | flags u8 (bit 0: blocked)
//! | perm u16 | uid u32 | gid u32 | ino u64 | size u64 | mtime_ns i64 | ctime_ns i64
//! ```
//! 45 bytes. Keys written without metadata (for example by `kvfs put`) get default
//! attributes; see [`Attr::default_file`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::codec::{PutLe, Reader};
use crate::format::{FormatError, FormatResult};

pub const ATTR_VERSION: u8 = 1;
pub const ENCODED_LEN: usize = 45;
/// Flag: the file's content lives in blocks, not in the path key's value.
pub const FLAG_BLOCKED: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// Attributes of one file, directory or symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Content is stored in fixed-size blocks (large files).
    pub blocked: bool,
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
    /// Attributes of a key that carries no metadata.
    pub fn default_file(ino: u64, size: u64, owner: (u32, u32), time: SystemTime) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            perm: 0o644,
            uid: owner.0,
            gid: owner.1,
            size,
            mtime: time,
            ctime: time,
            blocked: false,
        }
    }

    /// Attributes of a directory that exists only as a key prefix.
    pub fn implicit_dir(ino: u64, owner: (u32, u32), time: SystemTime) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            perm: 0o755,
            uid: owner.0,
            gid: owner.1,
            size: 0,
            mtime: time,
            ctime: time,
            blocked: false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.put_u8(ATTR_VERSION);
        out.put_u8(match self.kind {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
        });
        out.put_u8(if self.blocked { FLAG_BLOCKED } else { 0 });
        out.put_u16(self.perm);
        out.put_u32(self.uid);
        out.put_u32(self.gid);
        out.put_u64(self.ino);
        out.put_u64(self.size);
        out.put_u64(to_ns(self.mtime) as u64);
        out.put_u64(to_ns(self.ctime) as u64);
        out
    }

    pub fn decode(data: &[u8]) -> FormatResult<Attr> {
        let mut r = Reader::new(data, "file attributes");
        let version = r.u8()?;
        if version != ATTR_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "file attributes",
                version: version as u16,
            });
        }
        let kind = match r.u8()? {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            k => return Err(r.invalid(format!("unknown kind {k}"))),
        };
        let flags = r.u8()?;
        let attr = Attr {
            kind,
            blocked: flags & FLAG_BLOCKED != 0,
            perm: r.u16()? & 0o7777,
            uid: r.u32()?,
            gid: r.u32()?,
            ino: r.u64()?,
            size: r.u64()?,
            mtime: from_ns(r.u64()? as i64),
            ctime: from_ns(r.u64()? as i64),
        };
        if r.remaining() != 0 {
            return Err(r.invalid("trailing bytes"));
        }
        Ok(attr)
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
            kind: Kind::Symlink,
            perm: 0o1755,
            uid: 1000,
            gid: 100,
            size: 1 << 40,
            mtime: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            ctime: UNIX_EPOCH - Duration::from_secs(5),
            blocked: true,
        };
        let e = a.encode();
        assert_eq!(e.len(), ENCODED_LEN);
        assert_eq!(Attr::decode(&e).unwrap(), a);
        for n in 0..e.len() {
            assert!(Attr::decode(&e[..n]).is_err());
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Attr::decode(&data);
        }
    }
}
