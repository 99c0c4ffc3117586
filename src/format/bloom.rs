//! Blocked bloom filters: the filter section of an index table part.
//!
//! Vocabulary:
//! - **filter block**: 64 bytes (512 bits); every probe of one key falls in one
//!   filter block, so a lookup touches one cache line.
//! - **bits per key**: filter size over key count; with `k` probes per key the
//!   false-positive rate is about `(1 - e^(-k/bits_per_key))^k` (a little more, as
//!   blocks fill unevenly): 10 bits and `k = 7` give about 1 %, 16 bits and `k = 11`
//!   about 0.1 %.
//!
//! A key's hash is XXH3-64 with seed 0 (a published algorithm, so stored filters stay
//! valid across versions of kvfs and of the hashing crate). Its high 32 bits choose
//! the filter block (`(hi × nblocks) >> 32`); its low 32 bits `a` and
//! `b = rotate_right(a, 17) | 1` give the probes `(a + i·b) mod 512` for `i` in `0..k`,
//! in wrapping 32-bit arithmetic. Bit `j` of a block is bit `j mod 8` of its byte
//! `j / 8`.
//!
//! ```text
//! bits_per_key u8 | k u8 | reserved u16 = 0 | nblocks u32 | nblocks × 64 bytes
//! ```

use super::codec::{PutLe, Reader};
use super::FormatResult;

/// Bytes of one filter block.
pub const FILTER_BLOCK_BYTES: usize = 64;
const FILTER_BLOCK_BITS: u32 = (FILTER_BLOCK_BYTES * 8) as u32;
/// Bytes before the filter blocks.
pub const FILTER_HEADER_LEN: usize = 8;
/// The most probes per key a decoder accepts.
pub const MAX_PROBES: u8 = 30;
const WHAT: &str = "bloom filter";

/// The hash a filter stores for `key`.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The number of probes that minimises false positives for `bits_per_key`
/// (`bits_per_key × ln 2`, at least 1).
pub fn probes_for(bits_per_key: u8) -> u8 {
    ((bits_per_key as f64 * std::f64::consts::LN_2).round() as u8).clamp(1, MAX_PROBES)
}

fn block_of(hash: u64, nblocks: u32) -> usize {
    (((hash >> 32) * nblocks as u64) >> 32) as usize
}

fn probes(hash: u64, k: u8) -> impl Iterator<Item = u32> {
    let a = hash as u32;
    let b = a.rotate_right(17) | 1;
    (0..k as u32).map(move |i| a.wrapping_add(i.wrapping_mul(b)) % FILTER_BLOCK_BITS)
}

/// Collects key hashes, then writes the filter section.
#[derive(Debug)]
pub struct BloomBuilder {
    bits_per_key: u8,
    hashes: Vec<u64>,
}

impl BloomBuilder {
    /// A builder at `bits_per_key` (at least 1).
    pub fn new(bits_per_key: u8) -> Self {
        BloomBuilder {
            bits_per_key: bits_per_key.max(1),
            hashes: Vec::new(),
        }
    }

    pub fn add_key(&mut self, key: &[u8]) {
        self.hashes.push(key_hash(key));
    }

    /// Append the filter section to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let k = probes_for(self.bits_per_key);
        let bits = self.hashes.len() as u64 * self.bits_per_key as u64;
        let nblocks = if self.hashes.is_empty() {
            0
        } else {
            bits.div_ceil(FILTER_BLOCK_BITS as u64)
                .clamp(1, u32::MAX as u64) as u32
        };
        out.put_u8(self.bits_per_key);
        out.put_u8(k);
        out.put_u16(0);
        out.put_u32(nblocks);
        let start = out.len();
        out.resize(start + nblocks as usize * FILTER_BLOCK_BYTES, 0);
        let blocks = &mut out[start..];
        for &h in &self.hashes {
            let base = block_of(h, nblocks) * FILTER_BLOCK_BYTES;
            for bit in probes(h, k) {
                blocks[base + (bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
    }
}

/// A decoded filter section. A filter of no blocks (a part of no keys) contains
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bloom {
    pub bits_per_key: u8,
    pub probes: u8,
    blocks: Vec<u8>,
}

impl Bloom {
    /// Decode a whole filter section; `section` must be exactly its bytes.
    pub fn decode(section: &[u8]) -> FormatResult<Bloom> {
        let mut r = Reader::new(section, WHAT);
        let bits_per_key = r.u8()?;
        let probes = r.u8()?;
        let reserved = r.u16()?;
        let nblocks = r.u32()? as usize;
        if bits_per_key == 0 || probes == 0 || probes > MAX_PROBES || reserved != 0 {
            return Err(r.invalid(format!(
                "bad parameters ({bits_per_key} bits per key, {probes} probes)"
            )));
        }
        if r.remaining() / FILTER_BLOCK_BYTES < nblocks {
            return Err(r.invalid(format!("{nblocks} blocks do not fit the section")));
        }
        let blocks = r.bytes(nblocks * FILTER_BLOCK_BYTES)?.to_vec();
        if r.remaining() != 0 {
            return Err(r.invalid("bytes after the filter blocks"));
        }
        Ok(Bloom {
            bits_per_key,
            probes,
            blocks,
        })
    }

    /// Whether `key` may be in the set: false means certainly not.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hash(key_hash(key))
    }

    /// [`Bloom::may_contain`] for a hash from [`key_hash`], so that one hash serves
    /// the filters of several parts.
    pub fn may_contain_hash(&self, hash: u64) -> bool {
        let nblocks = (self.blocks.len() / FILTER_BLOCK_BYTES) as u32;
        if nblocks == 0 {
            return false;
        }
        let base = block_of(hash, nblocks) * FILTER_BLOCK_BYTES;
        probes(hash, self.probes)
            .all(|bit| self.blocks[base + (bit / 8) as usize] & (1 << (bit % 8)) != 0)
    }

    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.blocks.capacity() + std::mem::size_of::<Self>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn filter_of(keys: impl Iterator<Item = Vec<u8>>, bits: u8) -> Vec<u8> {
        let mut b = BloomBuilder::new(bits);
        for k in keys {
            b.add_key(&k);
        }
        let mut out = Vec::new();
        b.write(&mut out);
        out
    }

    #[test]
    fn the_hash_is_xxh3_with_seed_zero() {
        // Published XXH3-64 test vector: the empty input.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
    }

    #[test]
    fn false_positive_rates_match_the_bits_per_key() {
        let n = 20_000u32;
        for (bits, most) in [(10u8, 0.02), (16, 0.003)] {
            let section = filter_of((0..n).map(|i| format!("key{i}").into_bytes()), bits);
            let f = Bloom::decode(&section).unwrap();
            for i in 0..n {
                assert!(f.may_contain(format!("key{i}").as_bytes()));
            }
            let fp = (0..n)
                .filter(|i| f.may_contain(format!("other{i}").as_bytes()))
                .count() as f64
                / n as f64;
            assert!(fp < most, "{bits} bits per key: {fp} false positives");
        }
    }

    #[test]
    fn an_empty_filter_contains_nothing() {
        let section = filter_of(std::iter::empty(), 10);
        assert_eq!(section.len(), FILTER_HEADER_LEN);
        assert!(!Bloom::decode(&section).unwrap().may_contain(b"a"));
    }

    #[test]
    fn bad_sections_are_errors() {
        let good = filter_of((0..100u32).map(|i| i.to_le_bytes().to_vec()), 10);
        for n in 0..good.len() {
            assert!(Bloom::decode(&good[..n]).is_err(), "cut at {n}");
        }
        for (at, v) in [(0usize, 0u8), (1, 0), (1, MAX_PROBES + 1), (2, 1)] {
            let mut bad = good.clone();
            bad[at] = v;
            assert!(Bloom::decode(&bad).is_err(), "byte {at} = {v}");
        }
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Bloom::decode(&huge).is_err());
    }

    proptest! {
        #[test]
        fn no_false_negatives(keys in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..24), 0..200), bits in 1u8..24) {
            let section = filter_of(keys.iter().cloned(), bits);
            let f = Bloom::decode(&section).unwrap();
            for k in &keys {
                prop_assert!(f.may_contain(k));
            }
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300),
                               key in proptest::collection::vec(any::<u8>(), 0..8)) {
            if let Ok(f) = Bloom::decode(&data) {
                let _ = f.may_contain(&key);
            }
        }
    }
}
