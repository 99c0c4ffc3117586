//! Little-endian fixed-width encoding helpers shared by the object formats.

use super::{FormatError, FormatResult};

/// A bounds-checked cursor over untrusted bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub fn at(buf: &'a [u8], pos: usize, what: &'static str) -> Self {
        Reader { buf, pos, what }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub fn bytes(&mut self, n: usize) -> FormatResult<&'a [u8]> {
        if self.remaining() < n {
            return Err(FormatError::Truncated {
                what: self.what,
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> FormatResult<[u8; N]> {
        let s = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self) -> FormatResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> FormatResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> FormatResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> FormatResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// An unsigned LEB128 varint of at most 10 bytes that fits in a `u64`.
    pub fn varint(&mut self) -> FormatResult<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            let bits = (b & 0x7f) as u64;
            if i == 9 && bits > 1 {
                return Err(self.invalid("varint overflows 64 bits"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(self.invalid("varint not in its shortest form"));
                }
                return Ok(v);
            }
        }
        Err(self.invalid("varint longer than 10 bytes"))
    }

    pub fn invalid(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            what: self.what,
            reason: reason.into(),
        }
    }
}

/// Appends fixed-width little-endian values to a byte vector.
pub trait PutLe {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    /// An unsigned LEB128 varint (7 bits per byte, low bits first).
    fn put_varint(&mut self, v: u64);
}

impl PutLe for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.push(v as u8);
    }
}

/// Check the common 16-byte object header: magic (8), version (2), flags (2),
/// reserved (4). Returns the flags.
pub fn read_header(r: &mut Reader<'_>, magic: &[u8; 8], version: u16) -> FormatResult<u16> {
    let what = r.what;
    if r.bytes(8)? != magic {
        return Err(FormatError::BadMagic { what });
    }
    let v = r.u16()?;
    if v != version {
        return Err(FormatError::UnsupportedVersion { what, version: v });
    }
    let flags = r.u16()?;
    let _reserved = r.u32()?;
    Ok(flags)
}

/// Write the common 16-byte object header.
pub fn write_header(out: &mut Vec<u8>, magic: &[u8; 8], version: u16, flags: u16) {
    out.extend_from_slice(magic);
    out.put_u16(version);
    out.put_u16(flags);
    out.put_u32(0);
}

/// Verify a trailing `crc32c u32 | magic 8` footer covering everything before it.
/// Returns the body (bytes before the footer).
pub fn check_trailer<'a>(
    buf: &'a [u8],
    magic: &[u8; 8],
    what: &'static str,
) -> FormatResult<&'a [u8]> {
    if buf.len() < 12 {
        return Err(FormatError::Truncated {
            what,
            offset: buf.len(),
            needed: 12 - buf.len(),
        });
    }
    let (body, tail) = buf.split_at(buf.len() - 12);
    if &tail[4..12] != magic {
        return Err(FormatError::Invalid {
            what,
            reason: "missing end marker (truncated or not a kvfs object)".to_string(),
        });
    }
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(FormatError::Checksum {
            what,
            stored,
            computed,
        });
    }
    Ok(body)
}

/// Append the trailing `crc32c u32 | magic 8` footer.
pub fn write_trailer(out: &mut Vec<u8>, magic: &[u8; 8]) {
    let crc = crc32c::crc32c(out);
    out.put_u32(crc);
    out.extend_from_slice(magic);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varints_refuse_overlong_and_overflowing_forms() {
        for bad in [
            &[0x80u8, 0x00][..],
            &[0xff; 11][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..],
            &[0x80][..],
        ] {
            assert!(Reader::new(bad, "test").varint().is_err(), "{bad:?}");
        }
        let mut max = Vec::new();
        max.put_varint(u64::MAX);
        assert_eq!(max.len(), 10);
        assert_eq!(Reader::new(&max, "test").varint().unwrap(), u64::MAX);
    }

    proptest! {
        #[test]
        fn varints_roundtrip(v in any::<u64>()) {
            let mut out = Vec::new();
            out.put_varint(v);
            let mut r = Reader::new(&out, "test");
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn varint_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = Reader::new(&data, "test").varint();
        }
    }
}
