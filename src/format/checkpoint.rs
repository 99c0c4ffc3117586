//! Checkpoints: a sorted snapshot of the whole index.
//!
//! A checkpoint lists, for every live key, where its latest value lives: a segment
//! (by index into the checkpoint's segment table), the entry's offset in that segment
//! and the value length. Values themselves stay in the segments.
//!
//! Checkpoints are *fuzzy*: the writer encodes the index in chunks while writes go on,
//! so a checkpoint holds the state as of `covers` plus some later changes. Replaying
//! the log from `covers + 1` on top of it yields the exact state, because every log
//! entry sets or removes one key and the last one wins (see `db::checkpointer`).
//!
//! ```text
//! header (16): magic "KVFSCKP1" | version u16 | flags u16 | reserved u32
//! writer_epoch u64 | covers_epoch u64 | covers_seq u64
//! segment_count u32, then per segment: epoch u64 | seq u64
//! entry_count u64, then per entry (keys strictly increasing):
//!     key_len u16 | key | segment u32 | offset u32 | value_len u32 | meta_len u8 | meta
//! trailer (12): crc32c u32 (of all preceding bytes) | magic "KVFSCKPE"
//! ```

use super::codec::{check_trailer, read_header, write_header, write_trailer, PutLe, Reader};
use super::names::ObjectId;
use super::FormatResult;

pub const MAGIC: &[u8; 8] = b"KVFSCKP1";
pub const END_MAGIC: &[u8; 8] = b"KVFSCKPE";
pub const VERSION: u16 = 1;
const WHAT: &str = "checkpoint";

/// Where a value lives: the stored value (checksum, then bytes) at `offset` of the
/// data object (segment or run) in slot `slot` of the index's object table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub slot: u32,
    pub offset: u32,
    pub value_len: u32,
}

/// What the index knows of a key: where its value lives, and its metadata (kept in
/// memory, so listing keys with their metadata needs no request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub loc: Location,
    pub meta: Option<Box<[u8]>>,
}

/// A decoded checkpoint.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub writer_epoch: u64,
    /// The last segment whose effects the checkpoint includes.
    pub covers: ObjectId,
    pub segments: Vec<ObjectId>,
    pub entries: Vec<(Box<[u8]>, IndexEntry)>,
}

/// Append one entry in checkpoint layout (for [`assemble`]).
pub fn encode_entry(out: &mut Vec<u8>, key: &[u8], entry: &IndexEntry) {
    encode_entry_at(out, key, entry, entry.loc.slot);
}

/// Like [`encode_entry`], with the entry's object at `slot` of the checkpoint's
/// segment table (which need not be the in-memory slot).
pub fn encode_entry_at(out: &mut Vec<u8>, key: &[u8], entry: &IndexEntry, slot: u32) {
    out.put_u16(key.len() as u16);
    out.extend_from_slice(key);
    out.put_u32(slot);
    out.put_u32(entry.loc.offset);
    out.put_u32(entry.loc.value_len);
    let meta = entry.meta.as_deref().unwrap_or(&[]);
    out.put_u8(meta.len() as u8);
    out.extend_from_slice(meta);
}

/// Build a checkpoint object from entries already encoded with [`encode_entry`]
/// (keys strictly increasing).
pub fn assemble(
    writer_epoch: u64,
    covers: ObjectId,
    segments: &[ObjectId],
    entry_count: u64,
    entries: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + segments.len() * 16 + entries.len());
    write_header(&mut out, MAGIC, VERSION, 0);
    out.put_u64(writer_epoch);
    out.put_u64(covers.epoch);
    out.put_u64(covers.seq);
    out.put_u32(segments.len() as u32);
    for s in segments {
        out.put_u64(s.epoch);
        out.put_u64(s.seq);
    }
    out.put_u64(entry_count);
    out.extend_from_slice(entries);
    write_trailer(&mut out, END_MAGIC);
    out
}

/// Encode a checkpoint from sorted `(key, location)` pairs.
pub fn encode<'a>(
    writer_epoch: u64,
    covers: ObjectId,
    segments: &[ObjectId],
    entries: impl Iterator<Item = (&'a [u8], &'a IndexEntry)>,
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut count = 0u64;
    for (key, entry) in entries {
        encode_entry(&mut body, key, entry);
        count += 1;
    }
    assemble(writer_epoch, covers, segments, count, &body)
}

/// Decode and validate a checkpoint.
pub fn decode(buf: &[u8]) -> FormatResult<Checkpoint> {
    let body = check_trailer(buf, END_MAGIC, WHAT)?;
    let mut r = Reader::new(body, WHAT);
    read_header(&mut r, MAGIC, VERSION)?;
    let writer_epoch = r.u64()?;
    let covers = ObjectId {
        epoch: r.u64()?,
        seq: r.u64()?,
    };
    let seg_count = r.u32()? as usize;
    if seg_count > r.remaining() / 16 {
        return Err(r.invalid(format!("segment count {seg_count} exceeds object size")));
    }
    let mut segments = Vec::with_capacity(seg_count);
    for _ in 0..seg_count {
        segments.push(ObjectId {
            epoch: r.u64()?,
            seq: r.u64()?,
        });
    }
    let entry_count = r.u64()?;
    // Every entry takes at least 16 bytes.
    if entry_count > (r.remaining() / 16) as u64 {
        return Err(r.invalid(format!("entry count {entry_count} exceeds object size")));
    }
    let mut entries: Vec<(Box<[u8]>, IndexEntry)> = Vec::with_capacity(entry_count as usize);
    for i in 0..entry_count {
        let key_len = r.u16()? as usize;
        if key_len == 0 {
            return Err(r.invalid(format!("entry {i} has an empty key")));
        }
        let key = r.bytes(key_len)?;
        let loc = Location {
            slot: r.u32()?,
            offset: r.u32()?,
            value_len: r.u32()?,
        };
        let meta_len = r.u8()? as usize;
        let meta = match meta_len {
            0 => None,
            n => Some(Box::from(r.bytes(n)?)),
        };
        if loc.slot as usize >= segments.len() {
            return Err(r.invalid(format!(
                "entry {i} names segment slot {} of {}",
                loc.slot,
                segments.len()
            )));
        }
        if let Some((prev, _)) = entries.last() {
            if &**prev >= key {
                return Err(r.invalid(format!("keys out of order at entry {i}")));
            }
        }
        entries.push((key.into(), IndexEntry { loc, meta }));
    }
    if r.remaining() != 0 {
        return Err(r.invalid(format!("{} unexpected trailing bytes", r.remaining())));
    }
    Ok(Checkpoint {
        writer_epoch,
        covers,
        segments,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let segs = [ObjectId { epoch: 1, seq: 1 }, ObjectId { epoch: 1, seq: 2 }];
        let a = IndexEntry {
            loc: Location {
                slot: 0,
                offset: 32,
                value_len: 3,
            },
            meta: None,
        };
        let b = IndexEntry {
            loc: Location {
                slot: 1,
                offset: 99,
                value_len: 0,
            },
            meta: Some(Box::from(&b"attrs"[..])),
        };
        let entries: Vec<(&[u8], &IndexEntry)> = vec![(b"a", &a), (b"b/c", &b)];
        encode(1, segs[1], &segs, entries.into_iter())
    }

    #[test]
    fn roundtrip() {
        let c = decode(&sample()).unwrap();
        assert_eq!(c.segments.len(), 2);
        assert_eq!(c.entries.len(), 2);
        assert_eq!(&*c.entries[1].0, b"b/c");
        assert_eq!(c.entries[1].1.loc.offset, 99);
        assert_eq!(c.entries[1].1.meta.as_deref(), Some(&b"attrs"[..]));
        assert_eq!(c.entries[0].1.meta, None);
        assert_eq!(c.covers, ObjectId { epoch: 1, seq: 2 });
    }

    #[test]
    fn corruption_and_truncation_are_errors() {
        let data = sample();
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x11;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
        for n in 0..data.len() {
            assert!(decode(&data[..n]).is_err(), "cut at {n}");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&data);
        }

        #[test]
        fn decode_never_panics_when_crc_is_fixed_up(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
            // Mutate the body, then recompute the trailer so the structural checks run.
            let data = sample();
            let mut body = data[..data.len() - 12].to_vec();
            for (i, x) in flips { let n = body.len(); body[i % n] ^= x; }
            write_trailer(&mut body, END_MAGIC);
            let _ = decode(&body);
        }
    }
}
