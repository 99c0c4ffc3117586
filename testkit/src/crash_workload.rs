//! The write workload of the crash tests and of `kvfs-bench crash`, and its model.
//!
//! Batch `b` (from 1) is one atomic `write_batch` of one to six puts and deletes over
//! the [`KEY_SPACE`] keys `k000`, `k001`, … (a quarter of them deletes; values mostly
//! short, now and then empty or up to 2 KB), a pure function of `(seed, b)`, that also
//! sets the marker key [`MARKER`] to `b`. A recovered store whose marker reads `m`
//! must hold exactly the model's state after batches `1..=m`: then it is a prefix of
//! the write history, and it holds every acknowledged batch when `m` is at least the
//! last one acknowledged.

use std::collections::BTreeMap;

use kvfs::db::BatchOp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The key that holds the number of the last batch applied.
pub const MARKER: &[u8] = b"__batch";
/// Number of distinct keys the workload touches (besides the marker).
pub const KEY_SPACE: u64 = 150;

/// The operations of batch `b` (for `b >= 1`): a pure function of `(seed, b)`.
pub fn batch_ops(seed: u64, b: u64) -> Vec<BatchOp> {
    let mix = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut rng = StdRng::seed_from_u64(mix);
    let n = rng.random_range(1..=6);
    let mut ops = Vec::with_capacity(n + 1);
    for i in 0..n {
        let key = format!("k{:03}", rng.random_range(0..KEY_SPACE)).into_bytes();
        if rng.random_bool(0.25) {
            ops.push(BatchOp::Delete(key));
        } else {
            let len = match rng.random_range(0..20) {
                0 => rng.random_range(500..2000),
                1 => 0,
                _ => rng.random_range(1..120),
            };
            let mut value = format!("{b}.{i}:").into_bytes();
            let start = value.len();
            value.resize(start + len, 0);
            rng.fill(&mut value[start..]);
            ops.push(BatchOp::Put(key, value));
        }
    }
    ops.push(BatchOp::Put(MARKER.to_vec(), b.to_string().into_bytes()));
    ops
}

/// The batch number a marker value names.
pub fn parse_batch(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The expected store contents after batches `1..=applied`.
#[derive(Clone, Debug)]
pub struct Model {
    seed: u64,
    /// The last batch applied.
    pub applied: u64,
    /// Every key and its value, the marker included.
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Model {
    /// The empty store, before batch 1 of the workload with `seed`.
    pub fn new(seed: u64) -> Model {
        Model {
            seed,
            applied: 0,
            map: BTreeMap::new(),
        }
    }

    /// Apply batches up to `m`. Panics if `m` is before the last batch applied: the
    /// model cannot go back.
    pub fn advance_to(&mut self, m: u64) {
        assert!(m >= self.applied, "the model cannot go back");
        while self.applied < m {
            self.applied += 1;
            for op in batch_ops(self.seed, self.applied) {
                match op {
                    BatchOp::Put(k, v) => {
                        self.map.insert(k, v);
                    }
                    BatchOp::Delete(k) => {
                        self.map.remove(&k);
                    }
                    other => unreachable!("the workload makes no {other:?}"),
                }
            }
        }
    }

    /// Keys whose recovered value differs from the model (missing, unexpected, or
    /// wrong).
    pub fn differences(&self, got: &BTreeMap<Vec<u8>, Vec<u8>>) -> usize {
        let missing_or_wrong = self
            .map
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .count();
        let extra = got.keys().filter(|k| !self.map.contains_key(*k)).count();
        missing_or_wrong + extra
    }
}
