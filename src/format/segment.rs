//! Log segments: the unit of upload.
//!
//! A segment is one object holding a header, a sequence of entries and a footer. The
//! footer's CRC32C covers the whole object, so a full read verifies everything at
//! once. A segment is written by a single PUT and is immutable: the entries of one
//! `write_batch` always sit in one segment, which makes the batch atomic.
//!
//! An **entry** is one key-level operation:
//! - *put*: the key takes a new value (stored in the entry) and optional metadata;
//! - *delete*: the key is removed;
//! - *link*: the key takes a value stored earlier (by reference to its segment and
//!   offset), with its own metadata. Rename and metadata-only changes use links, so
//!   they never copy data.
//!
//! A stored **value** is preceded by its own CRC32C, and a value's location is the
//! offset of that checksum: a ranged GET of `4 + value_len` bytes fetches and verifies
//! one value, whichever key (or keys) refer to it.
//!
//! ```text
//! header (32): magic "KVFSSEG1" | version u16 | flags u16 | reserved u32 | epoch u64 | seq u64
//! entry:       crc32c u32 (of kind .. end of meta) | kind u8 | key_len u16 | meta_len u8
//!              | value_len u32 | key | meta | body
//!   put body:    value_crc u32 | value
//!   link body:   target_epoch u64 | target_seq u64 | target_offset u32
//!   delete body: (none)
//! footer (16): entry_count u32 | crc32c u32 (of all preceding bytes) | magic "KVFSSEND"
//! ```

use bytes::Bytes;

use super::codec::{check_trailer, read_header, write_header, write_trailer, PutLe, Reader};
use super::names::ObjectId;
use super::{FormatError, FormatResult};

pub const MAGIC: &[u8; 8] = b"KVFSSEG1";
pub const END_MAGIC: &[u8; 8] = b"KVFSSEND";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;
pub const FOOTER_LEN: usize = 16;
/// Fixed part of an entry: crc, kind, key_len, meta_len, value_len.
pub const ENTRY_HEADER_LEN: usize = 12;
/// Body of a link entry: target epoch, seq and offset.
pub const LINK_BODY_LEN: usize = 20;
/// Largest metadata blob per key.
pub const MAX_META_LEN: usize = 255;
/// Flag: an empty segment written by a new writer to close the previous epoch's log.
pub const FLAG_FENCE: u16 = 1;

const WHAT: &str = "segment";

/// Operation recorded by an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Put = 1,
    Delete = 2,
    Link = 3,
}

impl EntryKind {
    fn from_u8(v: u8) -> Option<EntryKind> {
        match v {
            1 => Some(EntryKind::Put),
            2 => Some(EntryKind::Delete),
            3 => Some(EntryKind::Link),
            _ => None,
        }
    }
}

/// Encoded size of a put entry.
pub fn put_len(key_len: usize, meta_len: usize, value_len: usize) -> usize {
    ENTRY_HEADER_LEN + key_len + meta_len + 4 + value_len
}

/// Encoded size of a delete entry.
pub fn delete_len(key_len: usize) -> usize {
    ENTRY_HEADER_LEN + key_len
}

/// Encoded size of a link entry.
pub fn link_len(key_len: usize, meta_len: usize) -> usize {
    ENTRY_HEADER_LEN + key_len + meta_len + LINK_BODY_LEN
}

/// Bytes a ranged GET fetches for a value of `value_len` bytes.
pub fn stored_value_len(value_len: u32) -> u64 {
    4 + value_len as u64
}

/// Accumulates entries for one segment in memory.
#[derive(Debug)]
pub struct SegmentBuilder {
    id: ObjectId,
    buf: Vec<u8>,
    count: u32,
}

impl SegmentBuilder {
    pub fn new(id: ObjectId, flags: u16) -> Self {
        Self::with_capacity(id, flags, HEADER_LEN + FOOTER_LEN)
    }

    /// A builder whose buffer is allocated for `capacity` bytes up front.
    pub fn with_capacity(id: ObjectId, flags: u16, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(HEADER_LEN + FOOTER_LEN));
        write_header(&mut buf, MAGIC, VERSION, flags);
        buf.put_u64(id.epoch);
        buf.put_u64(id.seq);
        SegmentBuilder { id, buf, count: 0 }
    }

    pub fn id(&self) -> ObjectId {
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

    fn head(&mut self, kind: EntryKind, key: &[u8], meta: &[u8], value_len: u32) {
        write_entry_head(&mut self.buf, kind, key, meta, value_len);
        self.count += 1;
    }

    /// Append a put; returns the offset of the stored value (its checksum). The caller
    /// keeps keys at most `u16::MAX` bytes, meta at most 255 bytes and the segment
    /// under 4 GiB.
    pub fn put(&mut self, key: &[u8], meta: &[u8], value: &[u8]) -> u32 {
        self.count += 1;
        write_put(&mut self.buf, key, meta, value)
    }

    /// Append a delete.
    pub fn delete(&mut self, key: &[u8]) {
        self.head(EntryKind::Delete, key, &[], 0);
    }

    /// Append a link to the value stored at `target_offset` of segment `target`.
    pub fn link(
        &mut self,
        key: &[u8],
        meta: &[u8],
        value_len: u32,
        target: ObjectId,
        target_offset: u32,
    ) {
        self.head(EntryKind::Link, key, meta, value_len);
        self.buf.put_u64(target.epoch);
        self.buf.put_u64(target.seq);
        self.buf.put_u32(target_offset);
    }

    /// Bytes at `off..off + len` as appended so far (for reads of unsealed data).
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

/// Append an entry's fixed part, key and metadata (the body follows).
fn write_entry_head(buf: &mut Vec<u8>, kind: EntryKind, key: &[u8], meta: &[u8], value_len: u32) {
    let mut head = [0u8; ENTRY_HEADER_LEN - 4];
    head[0] = kind as u8;
    head[1..3].copy_from_slice(&(key.len() as u16).to_le_bytes());
    head[3] = meta.len() as u8;
    head[4..8].copy_from_slice(&value_len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&head), key), meta);
    buf.put_u32(crc);
    buf.extend_from_slice(&head);
    buf.extend_from_slice(key);
    buf.extend_from_slice(meta);
}

/// Append a whole put entry (segments and runs share this encoding); returns the
/// offset of the stored value (its checksum).
pub(crate) fn write_put(buf: &mut Vec<u8>, key: &[u8], meta: &[u8], value: &[u8]) -> u32 {
    buf.reserve(put_len(key.len(), meta.len(), value.len()));
    write_entry_head(buf, EntryKind::Put, key, meta, value.len() as u32);
    let value_at = buf.len() as u32;
    buf.put_u32(crc32c::crc32c(value));
    buf.extend_from_slice(value);
    value_at
}

/// One entry located inside a segment buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Offset of the entry itself.
    pub offset: u32,
    pub kind: EntryKind,
    pub key: &'a [u8],
    pub meta: &'a [u8],
    /// Length of the value the key takes (put and link).
    pub value_len: u32,
    /// Put: offset of the stored value (its checksum) in this segment; link: offset in
    /// the target segment.
    pub value_offset: u32,
    /// Put: the value bytes; otherwise empty.
    pub value: &'a [u8],
    /// Link: the segment holding the value.
    pub target: Option<ObjectId>,
}

/// A verified segment.
#[derive(Debug)]
pub struct SegmentView<'a> {
    pub id: ObjectId,
    pub flags: u16,
    pub entry_count: u32,
    body: &'a [u8],
    /// Whether [`SegmentView::entries`] verifies each value's checksum.
    verify_values: bool,
}

impl<'a> SegmentView<'a> {
    /// Verify the whole-object checksum and header. Entries are parsed lazily by
    /// [`SegmentView::entries`], which still bounds-checks every field.
    pub fn decode(buf: &'a [u8]) -> FormatResult<SegmentView<'a>> {
        let body = check_trailer(buf, END_MAGIC, WHAT)?;
        Self::decode_body(body, true)
    }

    /// For a segment whose whole-object checksum fails: decode it anyway so that its
    /// entries can be read, each still verified by its own checksum, but without
    /// verifying values (damaged values are found when read, by their own
    /// checksums). Recovery uses it to replay a segment whose damage lies only in
    /// values: every entry that says which key changed how is intact, so the
    /// replayed state is exact.
    pub fn decode_salvaging(buf: &'a [u8]) -> FormatResult<SegmentView<'a>> {
        if buf.len() < 12 || &buf[buf.len() - 8..] != END_MAGIC {
            // Truncated, or not a segment: nothing to salvage (this is the error).
            check_trailer(buf, END_MAGIC, WHAT)?;
        }
        Self::decode_body(&buf[..buf.len() - 12], false)
    }

    fn decode_body(body: &'a [u8], verify_values: bool) -> FormatResult<SegmentView<'a>> {
        let mut r = Reader::new(body, WHAT);
        let flags = read_header(&mut r, MAGIC, VERSION)?;
        let epoch = r.u64()?;
        let seq = r.u64()?;
        if body.len() < HEADER_LEN + 4 {
            return Err(r.invalid("missing entry count"));
        }
        if body.len() > u32::MAX as usize {
            return Err(r.invalid("segment larger than 4 GiB"));
        }
        let count_at = body.len() - 4;
        let mut c = Reader::at(body, count_at, WHAT);
        let entry_count = c.u32()?;
        Ok(SegmentView {
            id: ObjectId { epoch, seq },
            flags,
            entry_count,
            body: &body[..count_at],
            verify_values,
        })
    }

    /// Iterate over the entries, in log order.
    pub fn entries(&self) -> EntryIter<'a> {
        EntryIter {
            body: self.body,
            pos: HEADER_LEN,
            seen: 0,
            expected: self.entry_count,
            verify_values: self.verify_values,
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
    verify_values: bool,
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
        let parsed = if self.verify_values {
            parse_entry(self.body, self.pos, true)
        } else {
            parse_entry_unverified_value(self.body, self.pos)
        };
        match parsed {
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

/// Parse the entry at `pos`. With `verify`, check the entry and value checksums.
pub(crate) fn parse_entry(
    buf: &[u8],
    pos: usize,
    verify: bool,
) -> FormatResult<(EntryRef<'_>, usize)> {
    parse_entry_checking(buf, pos, verify, verify)
}

/// Parse the entry at `pos`, checking its own checksum but not its value's.
fn parse_entry_unverified_value(buf: &[u8], pos: usize) -> FormatResult<(EntryRef<'_>, usize)> {
    parse_entry_checking(buf, pos, true, false)
}

fn parse_entry_checking(
    buf: &[u8],
    pos: usize,
    verify: bool,
    verify_value: bool,
) -> FormatResult<(EntryRef<'_>, usize)> {
    let mut r = Reader::at(buf, pos, WHAT);
    let crc = r.u32()?;
    let kind_byte = r.u8()?;
    let key_len = r.u16()? as usize;
    let meta_len = r.u8()? as usize;
    let value_len = r.u32()?;
    let kind = EntryKind::from_u8(kind_byte)
        .ok_or_else(|| r.invalid(format!("unknown entry kind {kind_byte} at offset {pos}")))?;
    if key_len == 0 {
        return Err(r.invalid(format!("entry at offset {pos} has an empty key")));
    }
    let key = r.bytes(key_len)?;
    let meta = r.bytes(meta_len)?;
    if verify {
        let computed = crc32c::crc32c(&buf[pos + 4..r.pos()]);
        if computed != crc {
            return Err(FormatError::Checksum {
                what: "segment entry",
                stored: crc,
                computed,
            });
        }
    }
    let mut entry = EntryRef {
        offset: pos as u32,
        kind,
        key,
        meta,
        value_len,
        value_offset: 0,
        value: &[],
        target: None,
    };
    match kind {
        EntryKind::Put => {
            entry.value_offset = r.pos() as u32;
            let value_crc = r.u32()?;
            entry.value = r.bytes(value_len as usize)?;
            if verify_value {
                let computed = crc32c::crc32c(entry.value);
                if computed != value_crc {
                    return Err(FormatError::Checksum {
                        what: "segment value",
                        stored: value_crc,
                        computed,
                    });
                }
            }
        }
        EntryKind::Delete => {
            if value_len != 0 || meta_len != 0 {
                return Err(r.invalid(format!("delete entry at offset {pos} carries data")));
            }
        }
        EntryKind::Link => {
            entry.target = Some(ObjectId {
                epoch: r.u64()?,
                seq: r.u64()?,
            });
            entry.value_offset = r.u32()?;
        }
    }
    Ok((entry, r.pos()))
}

/// Verify a value fetched by a ranged GET of [`stored_value_len`] bytes at its
/// location, and return the value without its checksum.
pub fn decode_value(stored: &Bytes) -> FormatResult<Bytes> {
    if stored.len() < 4 {
        return Err(FormatError::Truncated {
            what: "segment value",
            offset: stored.len(),
            needed: 4 - stored.len(),
        });
    }
    let crc = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let value = stored.slice(4..);
    let computed = crc32c::crc32c(&value);
    if computed != crc {
        return Err(FormatError::Checksum {
            what: "segment value",
            stored: crc,
            computed,
        });
    }
    Ok(value)
}

/// An empty fence segment (see [`FLAG_FENCE`]).
pub fn fence_segment(id: ObjectId) -> Bytes {
    SegmentBuilder::new(id, FLAG_FENCE).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TARGET: ObjectId = ObjectId { epoch: 1, seq: 9 };

    fn sample() -> Bytes {
        let mut b = SegmentBuilder::new(ObjectId { epoch: 2, seq: 5 }, 0);
        b.put(b"alpha", b"", b"one");
        b.delete(b"beta");
        b.put(b"gamma", b"meta", &[7u8; 300]);
        b.link(b"delta", b"m2", 3, TARGET, 77);
        b.finish()
    }

    #[test]
    fn roundtrip() {
        let data = sample();
        let v = SegmentView::decode(&data).unwrap();
        assert_eq!(v.id, ObjectId { epoch: 2, seq: 5 });
        let es: Vec<_> = v.entries().collect::<Result<_, _>>().unwrap();
        assert_eq!(es.len(), 4);
        assert_eq!(es[0].key, b"alpha");
        assert_eq!(es[0].value, b"one");
        assert_eq!(es[1].kind, EntryKind::Delete);
        assert_eq!(es[2].meta, b"meta");
        assert_eq!(es[2].value.len(), 300);
        assert_eq!(es[3].kind, EntryKind::Link);
        assert_eq!(es[3].target, Some(TARGET));
        assert_eq!(es[3].value_offset, 77);
        assert_eq!(es[3].value_len, 3);
        // A ranged read of a value verifies on its own.
        let e = es[2];
        let at = e.value_offset as usize;
        let stored = data.slice(at..at + stored_value_len(e.value_len) as usize);
        assert_eq!(decode_value(&stored).unwrap(), &[7u8; 300][..]);
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
    fn corrupt_value_is_detected_by_its_own_checksum() {
        let data = sample();
        let v = SegmentView::decode(&data).unwrap();
        let e = v.entries().next().unwrap().unwrap();
        let at = e.value_offset as usize;
        let mut raw = data[at..at + stored_value_len(e.value_len) as usize].to_vec();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(matches!(
            decode_value(&Bytes::from(raw)),
            Err(FormatError::Checksum { .. })
        ));
        assert!(decode_value(&Bytes::from_static(b"ab")).is_err());
    }

    #[test]
    fn salvaging_decode_reads_entries_past_a_damaged_value_only() {
        let data = sample();
        let v = SegmentView::decode(&data).unwrap();
        let first = v.entries().next().unwrap().unwrap();
        let expected: Vec<_> = v
            .entries()
            .map(|e| e.map(|e| (e.kind, e.key.to_vec(), e.value_len)))
            .collect::<Result<_, _>>()
            .unwrap();
        // A flipped value byte: the object checksum fails, every entry is intact.
        let mut bad = data.to_vec();
        bad[first.value_offset as usize + 5] ^= 0x40;
        assert!(SegmentView::decode(&bad).is_err());
        let s = SegmentView::decode_salvaging(&bad).unwrap();
        let got: Vec<_> = s
            .entries()
            .map(|e| e.map(|e| (e.kind, e.key.to_vec(), e.value_len)))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, expected);
        // A flipped byte in an entry's key is still an error.
        let mut bad = data.to_vec();
        bad[first.offset as usize + ENTRY_HEADER_LEN] ^= 0x40;
        let s = SegmentView::decode_salvaging(&bad).unwrap();
        assert!(s.entries().any(|e| e.is_err()));
        // Truncation is not salvaged.
        assert!(SegmentView::decode_salvaging(&data[..data.len() - 3]).is_err());
    }

    proptest! {
        #[test]
        fn salvaging_decode_never_panics(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
            let mut data = sample().to_vec();
            for (i, x) in flips { let n = data.len(); data[i % n] ^= x; }
            if let Ok(v) = SegmentView::decode_salvaging(&data) {
                for e in v.entries() { let _ = e; }
            }
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(v) = SegmentView::decode(&data) {
                for e in v.entries() { let _ = e; }
            }
            let _ = decode_value(&Bytes::from(data));
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
        fn decode_never_panics_when_the_trailer_is_fixed_up(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            // Mutate the entries, then recompute the trailer so entry parsing runs on
            // corrupt bytes.
            let data = sample();
            let mut body = data[..data.len() - 12].to_vec();
            let entries_end = body.len() - 4;
            for (i, x) in flips {
                let n = entries_end - HEADER_LEN;
                body[HEADER_LEN + i % n] ^= x;
            }
            write_trailer(&mut body, END_MAGIC);
            if let Ok(v) = SegmentView::decode(&body) {
                for e in v.entries() { let _ = e; }
            }
        }

        #[test]
        fn roundtrip_random(ops in proptest::collection::vec(
            (0u8..3, proptest::collection::vec(any::<u8>(), 1..40),
             proptest::collection::vec(any::<u8>(), 0..20),
             proptest::collection::vec(any::<u8>(), 0..100)), 0..40)) {
            let mut b = SegmentBuilder::new(ObjectId { epoch: 1, seq: 1 }, 0);
            for (kind, k, m, v) in &ops {
                match kind {
                    0 => { b.put(k, m, v); }
                    1 => b.delete(k),
                    _ => b.link(k, m, v.len() as u32, TARGET, 5),
                }
            }
            let data = b.finish();
            let view = SegmentView::decode(&data).unwrap();
            let es: Vec<_> = view.entries().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(es.len(), ops.len());
            for (e, (kind, k, m, v)) in es.iter().zip(ops.iter()) {
                prop_assert_eq!(e.key, &k[..]);
                match kind {
                    0 => {
                        prop_assert_eq!(e.value, &v[..]);
                        prop_assert_eq!(e.meta, &m[..]);
                    }
                    1 => prop_assert_eq!(e.kind, EntryKind::Delete),
                    _ => {
                        prop_assert_eq!(e.target, Some(TARGET));
                        prop_assert_eq!(e.value_len as usize, v.len());
                    }
                }
            }
        }
    }
}
