//! Log segments: the unit of upload.
//!
//! A segment is one object holding a header, a sequence of entries and a footer.
//! An entry is one key-level operation (put or delete) with its own CRC32C, so that a
//! ranged GET of a single entry can be verified on its own. The footer's CRC32C covers
//! the whole object, so a full read verifies everything at once. A segment is written
//! by a single PUT and is immutable: the entries of one `write_batch` always sit in
//! one segment, which makes the batch atomic.
//!
//! ```text
//! header  (32): magic "KVFSSEG1" | version u16 | flags u16 | reserved u32 | epoch u64 | seq u64
//! entry   (11 + key + value): crc32c u32 | kind u8 | key_len u16 | value_len u32 | key | value
//! footer  (16): entry_count u32 | crc32c u32 (of all preceding bytes) | magic "KVFSSEND"
//! ```

use bytes::Bytes;

use super::codec::{check_trailer, read_header, write_header, write_trailer, PutLe, Reader};
use super::names::SegmentId;
use super::{FormatError, FormatResult};

pub const MAGIC: &[u8; 8] = b"KVFSSEG1";
pub const END_MAGIC: &[u8; 8] = b"KVFSSEND";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;
pub const FOOTER_LEN: usize = 16;
pub const ENTRY_HEADER_LEN: usize = 11;
/// Flag: an empty segment written by a new writer to close the previous epoch's log.
pub const FLAG_FENCE: u16 = 1;

const WHAT: &str = "segment";

/// Operation recorded by an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Put = 1,
    Delete = 2,
}

impl EntryKind {
    fn from_u8(v: u8) -> Option<EntryKind> {
        match v {
            1 => Some(EntryKind::Put),
            2 => Some(EntryKind::Delete),
            _ => None,
        }
    }
}

/// Total encoded size of an entry.
pub fn entry_len(key_len: usize, value_len: usize) -> usize {
    ENTRY_HEADER_LEN + key_len + value_len
}

/// Accumulates entries for one segment in memory.
#[derive(Debug)]
pub struct SegmentBuilder {
    id: SegmentId,
    buf: Vec<u8>,
    count: u32,
}

impl SegmentBuilder {
    pub fn new(id: SegmentId, flags: u16) -> Self {
        Self::with_capacity(id, flags, HEADER_LEN + FOOTER_LEN)
    }

    /// A builder whose buffer is allocated for `capacity` bytes up front.
    pub fn with_capacity(id: SegmentId, flags: u16, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(HEADER_LEN + FOOTER_LEN));
        write_header(&mut buf, MAGIC, VERSION, flags);
        buf.put_u64(id.epoch);
        buf.put_u64(id.seq);
        SegmentBuilder { id, buf, count: 0 }
    }

    pub fn id(&self) -> SegmentId {
        self.id
    }

    /// Bytes so far (header and entries, without footer).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn entry_count(&self) -> u32 {
        self.count
    }

    /// Append an entry; returns its offset in the segment. The caller keeps keys at
    /// most `u16::MAX` bytes and the segment under 4 GiB.
    pub fn append(&mut self, kind: EntryKind, key: &[u8], value: &[u8]) -> u32 {
        let off = self.buf.len() as u32;
        let mut head = [0u8; ENTRY_HEADER_LEN - 4];
        head[0] = kind as u8;
        head[1..3].copy_from_slice(&(key.len() as u16).to_le_bytes());
        head[3..7].copy_from_slice(&(value.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&head), key), value);
        self.buf.reserve(ENTRY_HEADER_LEN + key.len() + value.len());
        self.buf.put_u32(crc);
        self.buf.extend_from_slice(&head);
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        self.count += 1;
        off
    }

    /// Bytes of the entry at `off` as appended so far (for reads of unsealed data).
    pub fn slice(&self, off: usize, len: usize) -> Option<&[u8]> {
        self.buf.get(off..off.checked_add(len)?)
    }

    /// Seal: append the footer and return the object bytes.
    pub fn finish(mut self) -> Bytes {
        self.buf.put_u32(self.count);
        write_trailer(&mut self.buf, END_MAGIC);
        Bytes::from(self.buf)
    }
}

/// One entry located inside a segment buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub offset: u32,
    pub kind: EntryKind,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// A verified segment.
#[derive(Debug)]
pub struct SegmentView<'a> {
    pub id: SegmentId,
    pub flags: u16,
    pub entry_count: u32,
    body: &'a [u8],
}

impl<'a> SegmentView<'a> {
    /// Verify the whole-object checksum and header. Entries are parsed lazily by
    /// [`SegmentView::entries`], which still bounds-checks every field.
    pub fn decode(buf: &'a [u8]) -> FormatResult<SegmentView<'a>> {
        let body = check_trailer(buf, END_MAGIC, WHAT)?;
        let mut r = Reader::new(body, WHAT);
        let flags = read_header(&mut r, MAGIC, VERSION)?;
        let epoch = r.u64()?;
        let seq = r.u64()?;
        if body.len() < HEADER_LEN + 4 {
            return Err(r.invalid("missing entry count"));
        }
        let count_at = body.len() - 4;
        let mut c = Reader::at(body, count_at, WHAT);
        let entry_count = c.u32()?;
        if body.len() > u32::MAX as usize {
            return Err(r.invalid("segment larger than 4 GiB"));
        }
        Ok(SegmentView {
            id: SegmentId { epoch, seq },
            flags,
            entry_count,
            body: &body[..count_at],
        })
    }

    /// Iterate over the entries, in log order.
    pub fn entries(&self) -> EntryIter<'a> {
        EntryIter {
            body: self.body,
            pos: HEADER_LEN,
            seen: 0,
            expected: self.entry_count,
        }
    }
}

/// Iterator over the entries of a [`SegmentView`]; yields an error (then stops) at
/// the first malformed entry.
pub struct EntryIter<'a> {
    body: &'a [u8],
    pos: usize,
    seen: u32,
    expected: u32,
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = FormatResult<EntryRef<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.body.len() {
            if self.seen != self.expected {
                let (seen, expected) = (self.seen, self.expected);
                self.seen = self.expected;
                return Some(Err(FormatError::Invalid {
                    what: WHAT,
                    reason: format!("footer says {expected} entries, found {seen}"),
                }));
            }
            return None;
        }
        let r = parse_entry(self.body, self.pos, false);
        match r {
            Ok((entry, end)) => {
                self.pos = end;
                self.seen += 1;
                Some(Ok(entry))
            }
            Err(e) => {
                self.pos = self.body.len();
                self.seen = self.expected;
                Some(Err(e))
            }
        }
    }
}

fn parse_entry(buf: &[u8], pos: usize, verify_crc: bool) -> FormatResult<(EntryRef<'_>, usize)> {
    let mut r = Reader::at(buf, pos, WHAT);
    let crc = r.u32()?;
    let kind_byte = r.u8()?;
    let key_len = r.u16()? as usize;
    let value_len = r.u32()? as usize;
    let kind = EntryKind::from_u8(kind_byte)
        .ok_or_else(|| r.invalid(format!("unknown entry kind {kind_byte} at offset {pos}")))?;
    if key_len == 0 {
        return Err(r.invalid(format!("entry at offset {pos} has an empty key")));
    }
    let key = r.bytes(key_len)?;
    let value = r.bytes(value_len)?;
    if verify_crc {
        let computed = crc32c::crc32c(&buf[pos + 4..r.pos()]);
        if computed != crc {
            return Err(FormatError::Checksum {
                what: "segment entry",
                stored: crc,
                computed,
            });
        }
    }
    Ok((
        EntryRef {
            offset: pos as u32,
            kind,
            key,
            value,
        },
        r.pos(),
    ))
}

/// Decode one entry fetched by a ranged GET (exactly the entry's bytes) and verify
/// its own checksum.
pub fn decode_entry(buf: &[u8], offset: u32) -> FormatResult<EntryRef<'_>> {
    let (mut entry, end) = parse_entry(buf, 0, true)?;
    if end != buf.len() {
        return Err(FormatError::Invalid {
            what: "segment entry",
            reason: format!("entry is {end} bytes, expected {}", buf.len()),
        });
    }
    entry.offset = offset;
    Ok(entry)
}

/// An empty fence segment (see [`FLAG_FENCE`]).
pub fn fence_segment(id: SegmentId) -> Bytes {
    SegmentBuilder::new(id, FLAG_FENCE).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Bytes {
        let mut b = SegmentBuilder::new(SegmentId { epoch: 2, seq: 5 }, 0);
        b.append(EntryKind::Put, b"alpha", b"one");
        b.append(EntryKind::Delete, b"beta", b"");
        b.append(EntryKind::Put, b"gamma", &[7u8; 300]);
        b.finish()
    }

    #[test]
    fn roundtrip() {
        let data = sample();
        let v = SegmentView::decode(&data).unwrap();
        assert_eq!(v.id, SegmentId { epoch: 2, seq: 5 });
        let es: Vec<_> = v.entries().collect::<Result<_, _>>().unwrap();
        assert_eq!(es.len(), 3);
        assert_eq!(es[0].key, b"alpha");
        assert_eq!(es[0].value, b"one");
        assert_eq!(es[1].kind, EntryKind::Delete);
        assert_eq!(es[2].value.len(), 300);
        let e = es[2];
        let len = entry_len(e.key.len(), e.value.len());
        let raw = &data[e.offset as usize..e.offset as usize + len];
        let d = decode_entry(raw, e.offset).unwrap();
        assert_eq!(d.key, b"gamma");
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let data = sample();
        for i in 0..data.len() {
            let mut bad = data.to_vec();
            bad[i] ^= 0x40;
            let res = SegmentView::decode(&bad)
                .and_then(|v| v.entries().collect::<Result<Vec<_>, _>>().map(|_| ()));
            assert!(res.is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let data = sample();
        for n in 0..data.len() {
            assert!(
                SegmentView::decode(&data[..n]).is_err(),
                "truncation at {n}"
            );
        }
    }

    #[test]
    fn corrupt_entry_is_detected_by_entry_crc() {
        let data = sample();
        let v = SegmentView::decode(&data).unwrap();
        let e = v.entries().next().unwrap().unwrap();
        let len = entry_len(e.key.len(), e.value.len());
        let mut raw = data[e.offset as usize..e.offset as usize + len].to_vec();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(matches!(
            decode_entry(&raw, e.offset),
            Err(FormatError::Checksum { .. })
        ));
        assert!(decode_entry(&raw[..len - 1], e.offset).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(v) = SegmentView::decode(&data) {
                for e in v.entries() { let _ = e; }
            }
            let _ = decode_entry(&data, 0);
        }

        #[test]
        fn decode_never_panics_on_mutated_segments(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut data = sample().to_vec();
            for (i, x) in flips { let n = data.len(); data[i % n] ^= x; }
            let n = data.len();
            data.truncate(n - cut % 8);
            if let Ok(v) = SegmentView::decode(&data) {
                for e in v.entries() { let _ = e; }
            }
        }

        #[test]
        fn roundtrip_random(ops in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 1..40),
             proptest::collection::vec(any::<u8>(), 0..100)), 0..40)) {
            let mut b = SegmentBuilder::new(SegmentId { epoch: 1, seq: 1 }, 0);
            let mut offs = Vec::new();
            for (put, k, v) in &ops {
                let kind = if *put { EntryKind::Put } else { EntryKind::Delete };
                offs.push(b.append(kind, k, if *put { v } else { &[] }));
            }
            let data = b.finish();
            let view = SegmentView::decode(&data).unwrap();
            let es: Vec<_> = view.entries().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(es.len(), ops.len());
            for (e, ((put, k, v), off)) in es.iter().zip(ops.iter().zip(offs)) {
                prop_assert_eq!(e.offset, off);
                prop_assert_eq!(e.key, &k[..]);
                if *put { prop_assert_eq!(e.value, &v[..]); }
            }
        }
    }
}
