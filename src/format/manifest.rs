//! Manifests: the root of a store's state.
//!
//! Manifest `N` is written once, create-if-absent, as object `manifest/N`; the one
//! with the highest number is current. It names the checkpoint to load, the log
//! ranges to replay after it, and the writer epoch that owns the store.
//!
//! A **log range** is `(epoch, first, last)`: segments `first..=last` of that epoch.
//! Every range but the last is *closed*: all its segments exist and must be replayed.
//! The last range may be *open* (`last = u64::MAX`): it belongs to the current writer,
//! and recovery replays its segments from `first` up to the first missing one.
//!
//! ```text
//! header (16): magic "KVFSMAN1" | version u16 | flags u16 | reserved u32
//! manifest_seq u64 | writer_epoch u64 | created_unix_ms u64 | checkpoint u64 (0 = none)
//! range_count u32, then per range: epoch u64 | first u64 | last u64
//! holder_len u16 | holder (UTF-8)
//! trailer (12): crc32c u32 | magic "KVFSMANE"
//! ```

use super::codec::{check_trailer, read_header, write_header, write_trailer, PutLe, Reader};
use super::FormatResult;

pub const MAGIC: &[u8; 8] = b"KVFSMAN1";
pub const END_MAGIC: &[u8; 8] = b"KVFSMANE";
pub const VERSION: u16 = 1;
/// `last` of an open log range.
pub const OPEN: u64 = u64::MAX;
const WHAT: &str = "manifest";
const MAX_RANGES: usize = 1 << 20;

/// Segments `first..=last` of writer epoch `epoch` (`last == OPEN`: up to the first gap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRange {
    pub epoch: u64,
    pub first: u64,
    pub last: u64,
}

impl LogRange {
    pub fn is_open(&self) -> bool {
        self.last == OPEN
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub seq: u64,
    pub writer_epoch: u64,
    pub created_unix_ms: u64,
    /// Number `n` of checkpoint object `ckpt/n`, or none.
    pub checkpoint: Option<u64>,
    pub ranges: Vec<LogRange>,
    /// Who wrote it (host and process), for operators.
    pub holder: String,
}

pub fn encode(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + m.ranges.len() * 24);
    write_header(&mut out, MAGIC, VERSION, 0);
    out.put_u64(m.seq);
    out.put_u64(m.writer_epoch);
    out.put_u64(m.created_unix_ms);
    out.put_u64(m.checkpoint.unwrap_or(0));
    out.put_u32(m.ranges.len() as u32);
    for r in &m.ranges {
        out.put_u64(r.epoch);
        out.put_u64(r.first);
        out.put_u64(r.last);
    }
    let holder = m.holder.as_bytes();
    let holder = &holder[..holder.len().min(u16::MAX as usize)];
    out.put_u16(holder.len() as u16);
    out.extend_from_slice(holder);
    write_trailer(&mut out, END_MAGIC);
    out
}

pub fn decode(buf: &[u8]) -> FormatResult<Manifest> {
    let body = check_trailer(buf, END_MAGIC, WHAT)?;
    let mut r = Reader::new(body, WHAT);
    read_header(&mut r, MAGIC, VERSION)?;
    let seq = r.u64()?;
    let writer_epoch = r.u64()?;
    let created_unix_ms = r.u64()?;
    let checkpoint = match r.u64()? {
        0 => None,
        n => Some(n),
    };
    let count = r.u32()? as usize;
    if count > MAX_RANGES || count > r.remaining() / 24 {
        return Err(r.invalid(format!("range count {count} exceeds object size")));
    }
    let mut ranges: Vec<LogRange> = Vec::with_capacity(count);
    for i in 0..count {
        let range = LogRange {
            epoch: r.u64()?,
            first: r.u64()?,
            last: r.u64()?,
        };
        if range.first == 0 || (!range.is_open() && range.last < range.first) {
            return Err(r.invalid(format!("log range {i} is malformed: {range:?}")));
        }
        if range.is_open() && i + 1 != count {
            return Err(r.invalid(format!("log range {i} is open but not last")));
        }
        if let Some(prev) = ranges.last() {
            if prev.epoch >= range.epoch {
                return Err(r.invalid(format!("log range {i} epochs out of order")));
            }
        }
        if range.epoch > writer_epoch {
            return Err(r.invalid(format!(
                "log range {i} has epoch {} above writer epoch {writer_epoch}",
                range.epoch
            )));
        }
        ranges.push(range);
    }
    let holder_len = r.u16()? as usize;
    let holder = String::from_utf8(r.bytes(holder_len)?.to_vec())
        .map_err(|_| r.invalid("holder is not UTF-8"))?;
    if r.remaining() != 0 {
        return Err(r.invalid(format!("{} unexpected trailing bytes", r.remaining())));
    }
    Ok(Manifest {
        seq,
        writer_epoch,
        created_unix_ms,
        checkpoint,
        ranges,
        holder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Manifest {
        Manifest {
            seq: 7,
            writer_epoch: 3,
            created_unix_ms: 1_700_000_000_000,
            checkpoint: Some(5),
            ranges: vec![
                LogRange {
                    epoch: 2,
                    first: 4,
                    last: 9,
                },
                LogRange {
                    epoch: 3,
                    first: 1,
                    last: OPEN,
                },
            ],
            holder: "host:123".into(),
        }
    }

    #[test]
    fn roundtrip() {
        let m = sample();
        assert_eq!(decode(&encode(&m)).unwrap(), m);
    }

    #[test]
    fn corruption_and_truncation_are_errors() {
        let data = encode(&sample());
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x08;
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
            let data = encode(&sample());
            let mut body = data[..data.len() - 12].to_vec();
            for (i, x) in flips { let n = body.len(); body[i % n] ^= x; }
            write_trailer(&mut body, END_MAGIC);
            let _ = decode(&body);
        }
    }
}
