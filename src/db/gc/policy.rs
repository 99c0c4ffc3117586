//! What to clean or compact next: a pure function of the store's state.
//!
//! [`choose`] looks at every data object (size, live data, age, whether recovery
//! still reads it as log) and returns one [`Choice`]. It does no I/O and reads no
//! clock, so it is tested on its own; `gc::worker` carries the choice out.
//!
//! Vocabulary:
//! - **rewritten size** of a set of objects ([`rewritten_size`]): the bytes the runs
//!   holding their live keys would take, counting what every run and block costs
//!   besides the entries (header, block index, footer, trailer).
//! - **fill** of an object: its rewritten size alone over its size, the share of the
//!   object a rewrite would keep. A run just written by a rewrite has fill 1 (up to
//!   the estimate of its block index), however small it is, so it is never chosen
//!   alone again: rewriting it would give back the same object.
//!
//! Rules, in order:
//! 1. **Compact the log**: once old log segments (at least `min_age`, out of the
//!    replay window) hold `compact_min_bytes` of live data, rewrite them, oldest first,
//!    into sorted runs. This is what makes a directory contiguous. Segments only ever
//!    turn into runs, never back, so this rule runs out of work.
//! 2. **Clean**: objects whose fill is below `clean_below_fill`, ranked by the LFS
//!    cost-benefit score `(1 - u) * age / (1 + u)`: free space gained, weighted by how
//!    long the data has stayed live, per byte copied.
//! 3. **Merge runs**: with more than `max_runs` runs, merge the smallest ones (by
//!    live bytes) into one, so a key range is spread over few runs.
//!
//! A clean or merge is chosen only when its sources' rewritten size is smaller than
//! their size, so each one lowers the bytes stored (the worker checks the exact
//! figure before it writes anything and drops a round that would not). That is why
//! repeated rounds reach a fixed point: with no new writes, the stored bytes of
//! objects holding live data fall with every clean and merge, and the number of log
//! segments holding live data with every log compaction.
//!
//! Each choice reads at most `max_round_bytes` of objects. An object that is in the
//! replay window, or has no live data (it only waits for deletion), is never chosen.

use std::time::Duration;

use crate::format::names::ObjectId;
use crate::format::run::{DEFAULT_BLOCK_BYTES, HEADER_LEN as RUN_HEADER_LEN, TAIL_LEN};

/// Bytes of one block-index record besides its first key (offset, length, entry
/// count, key length).
const BLOCK_RECORD_LEN: u64 = 14;

/// What the policy knows about one data object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectStat {
    pub id: ObjectId,
    /// Object size in bytes.
    pub size: u64,
    /// Key and value bytes of live keys whose value lies in the object.
    pub live: u64,
    /// Encoded put-entry bytes of those keys (what a rewrite copies).
    pub stored: u64,
    /// Number of those keys, and the sum of their lengths.
    pub keys: u64,
    pub key_bytes: u64,
    /// Time since the object was written (or since this process first saw it).
    pub age: Duration,
    /// Recovery still replays it as part of the log (current manifest's ranges).
    pub in_log: bool,
}

impl ObjectStat {
    /// The share of the object a rewrite would keep, 0..=1 (see the module docs).
    pub fn fill(&self, run_bytes: u64) -> f64 {
        if self.size == 0 {
            return 0.0;
        }
        (rewritten_size([self], run_bytes) as f64 / self.size as f64).min(1.0)
    }
}

/// Estimated bytes of the runs that the live keys of `objects` would be rewritten
/// into, with runs of about `run_bytes`: entries, plus header and tail per run, plus
/// one block-index record per block (its first key taken at the average key length).
pub fn rewritten_size<'a>(
    objects: impl IntoIterator<Item = &'a ObjectStat>,
    run_bytes: u64,
) -> u64 {
    let (mut stored, mut keys, mut key_bytes) = (0u64, 0u64, 0u64);
    for o in objects {
        stored += o.stored;
        keys += o.keys;
        key_bytes += o.key_bytes;
    }
    if keys == 0 {
        return 0;
    }
    let runs = stored.div_ceil(run_bytes.max(1)).max(1);
    let blocks = stored.div_ceil(DEFAULT_BLOCK_BYTES as u64).max(1) + (runs - 1);
    let first_key = key_bytes.div_ceil(keys);
    stored + runs * (RUN_HEADER_LEN + TAIL_LEN) as u64 + blocks * (BLOCK_RECORD_LEN + first_key)
}

/// Thresholds of the policy (from [`crate::db::GcOptions`]).
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub clean_below_fill: f64,
    pub min_age: Duration,
    pub max_round_bytes: u64,
    pub compact_min_bytes: u64,
    pub max_runs: usize,
    /// Target size of a run.
    pub run_bytes: u64,
}

impl From<&crate::db::GcOptions> for PolicyConfig {
    fn from(o: &crate::db::GcOptions) -> Self {
        PolicyConfig {
            clean_below_fill: o.clean_below_fill,
            min_age: o.min_age,
            max_round_bytes: o.max_round_bytes,
            compact_min_bytes: o.compact_min_bytes,
            max_runs: o.max_runs,
            run_bytes: o.run_bytes as u64,
        }
    }
}

/// Why a set of objects is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Old log segments into sorted runs.
    CompactLog,
    /// Mostly dead objects, to reclaim their space.
    Clean,
    /// Many small runs into one.
    MergeRuns,
    /// Everything, on demand (`kvfs compact`).
    CompactAll,
}

/// The next thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Nothing worth doing.
    Idle,
    /// Rewrite the live data of these objects, in key order, into new sorted runs.
    Rewrite {
        reason: Reason,
        sources: Vec<ObjectId>,
    },
}

/// Objects that may be rewritten at all: out of the log window, with live data.
fn movable(o: &ObjectStat) -> bool {
    !o.in_log && o.live > 0
}

/// Take objects in the given order until `budget` bytes of objects are reached (at
/// least one object, so an object larger than the budget still gets its turn).
fn take_budget<'a>(objs: impl Iterator<Item = &'a ObjectStat>, budget: u64) -> Vec<ObjectId> {
    let mut out = Vec::new();
    let mut used = 0u64;
    for o in objs {
        if !out.is_empty() && used + o.size > budget {
            break;
        }
        used += o.size;
        out.push(o.id);
    }
    out
}

/// LFS cost-benefit: `(1 - u) * age / (1 + u)`, with `u` the fill.
pub fn cost_benefit(o: &ObjectStat, run_bytes: u64) -> f64 {
    let u = o.fill(run_bytes);
    (1.0 - u) * o.age.as_secs_f64() / (1.0 + u)
}

/// The next rewrite the background worker should do.
pub fn choose(objects: &[ObjectStat], cfg: &PolicyConfig) -> Choice {
    // 1. Old log segments into runs.
    let mut old_segments: Vec<&ObjectStat> = objects
        .iter()
        .filter(|o| !o.id.is_run() && movable(o) && o.age >= cfg.min_age)
        .collect();
    let log_live: u64 = old_segments.iter().map(|o| o.stored).sum();
    if log_live >= cfg.compact_min_bytes && !old_segments.is_empty() {
        old_segments.sort_by_key(|o| o.id);
        return Choice::Rewrite {
            reason: Reason::CompactLog,
            sources: take_budget(old_segments.into_iter(), cfg.max_round_bytes),
        };
    }
    // 2. Mostly dead objects, best cost-benefit first.
    let run_bytes = cfg.run_bytes;
    let mut victims: Vec<&ObjectStat> = objects
        .iter()
        .filter(|o| movable(o) && o.age >= cfg.min_age && o.fill(run_bytes) < cfg.clean_below_fill)
        .collect();
    if !victims.is_empty() {
        victims.sort_by(|a, b| {
            cost_benefit(b, run_bytes)
                .total_cmp(&cost_benefit(a, run_bytes))
                .then(a.id.cmp(&b.id))
        });
        let sources = take_budget(victims.into_iter(), cfg.max_round_bytes);
        if shrinks(objects, &sources, run_bytes) {
            return Choice::Rewrite {
                reason: Reason::Clean,
                sources,
            };
        }
    }
    // 3. Too many runs: merge the smallest.
    let mut runs: Vec<&ObjectStat> = objects
        .iter()
        .filter(|o| o.id.is_run() && movable(o))
        .collect();
    if runs.len() > cfg.max_runs.max(1) {
        runs.sort_by_key(|o| (o.live, o.id));
        let excess = runs.len() - cfg.max_runs.max(1) + 1;
        let sources = take_budget(runs.into_iter().take(excess.max(2)), cfg.max_round_bytes);
        if sources.len() >= 2 && shrinks(objects, &sources, run_bytes) {
            return Choice::Rewrite {
                reason: Reason::MergeRuns,
                sources,
            };
        }
    }
    Choice::Idle
}

/// Whether rewriting `sources` would store fewer bytes than they take now.
pub fn shrinks(objects: &[ObjectStat], sources: &[ObjectId], run_bytes: u64) -> bool {
    let wanted: std::collections::HashSet<&ObjectId> = sources.iter().collect();
    let chosen: Vec<&ObjectStat> = objects.iter().filter(|o| wanted.contains(&o.id)).collect();
    let size: u64 = chosen.iter().map(|o| o.size).sum();
    rewritten_size(chosen.iter().copied(), run_bytes) < size
}

/// On demand: every object with live data out of the log window, in rounds of at
/// most `max_round_bytes` of objects (one round, one sorted output, when it fits).
pub fn compact_all(objects: &[ObjectStat], max_round_bytes: u64) -> Vec<Vec<ObjectId>> {
    let mut all: Vec<&ObjectStat> = objects.iter().filter(|o| movable(o)).collect();
    all.sort_by_key(|o| o.id);
    let mut rounds = Vec::new();
    let mut rest = all.as_slice();
    while !rest.is_empty() {
        let round = take_budget(rest.iter().copied(), max_round_bytes);
        rest = &rest[round.len()..];
        rounds.push(round);
    }
    rounds
}

/// Objects that no longer hold anything recovery or a reader of the current state
/// needs: no live data and out of the log window. (They are deleted once the grace
/// period has passed and the state that stopped needing them is durable.)
pub fn unneeded(objects: &[ObjectStat]) -> Vec<ObjectId> {
    objects
        .iter()
        .filter(|o| o.live == 0 && !o.in_log)
        .map(|o| o.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            clean_below_fill: 0.5,
            min_age: Duration::from_secs(30),
            max_round_bytes: 10_000,
            compact_min_bytes: 5_000,
            max_runs: 3,
            run_bytes: 1 << 20,
        }
    }

    /// A segment whose live keys (one, with an 8-byte key) take `live` bytes.
    fn seg(seq: u64, size: u64, live: u64, age: u64) -> ObjectStat {
        ObjectStat {
            id: ObjectId { epoch: 1, seq },
            size,
            live,
            stored: live,
            keys: u64::from(live > 0),
            key_bytes: if live > 0 { 8 } else { 0 },
            age: Duration::from_secs(age),
            in_log: false,
        }
    }

    fn run(seq: u64, size: u64, live: u64, age: u64) -> ObjectStat {
        ObjectStat {
            id: ObjectId::run(1, seq),
            ..seg(seq, size, live, age)
        }
    }

    /// A run exactly as a rewrite writes it: nothing in it has died since.
    fn full_run(seq: u64, stored: u64) -> ObjectStat {
        let mut o = run(seq, 0, stored, 100);
        o.size = rewritten_size([&o], 1 << 20);
        o
    }

    #[test]
    fn idle_when_nothing_to_do() {
        assert_eq!(choose(&[], &cfg()), Choice::Idle);
        // Full, young, or in the log: left alone.
        let objs = [
            seg(1, 1000, 900, 100),
            seg(2, 1000, 10, 5),
            ObjectStat {
                in_log: true,
                ..seg(3, 1000, 10, 100)
            },
        ];
        assert_eq!(choose(&objs, &cfg()), Choice::Idle);
    }

    #[test]
    fn a_lone_run_as_written_is_never_rewritten() {
        // However small: its overhead is part of what a rewrite would write again.
        for stored in [20, 104, 5000, 900_000] {
            let o = full_run(1, stored);
            assert!((o.fill(1 << 20) - 1.0).abs() < 1e-9, "{o:?}");
            let c = PolicyConfig {
                min_age: Duration::ZERO,
                ..cfg()
            };
            assert_eq!(choose(&[o], &c), Choice::Idle);
        }
    }

    #[test]
    fn fill_counts_the_fixed_overhead_of_a_run() {
        // 10 live bytes in a 200-byte segment: a rewrite keeps 92 bytes.
        let o = seg(1, 200, 10, 100);
        assert_eq!(rewritten_size([&o], 1 << 20), 10 + 60 + 22);
        assert!((o.fill(1 << 20) - 0.46).abs() < 1e-9);
        // Nothing live: nothing to keep.
        assert_eq!(rewritten_size([&seg(2, 200, 0, 1)], 1 << 20), 0);
    }

    #[test]
    fn compacts_old_segments_once_they_hold_enough_live_data() {
        let objs: Vec<_> = (1..=8).map(|i| seg(i, 1000, 900, 100)).collect();
        match choose(&objs, &cfg()) {
            Choice::Rewrite { reason, sources } => {
                assert_eq!(reason, Reason::CompactLog);
                // Oldest first, within the round budget.
                assert_eq!(sources.len(), 8);
                assert_eq!(sources[0], ObjectId { epoch: 1, seq: 1 });
            }
            c => panic!("{c:?}"),
        }
        // Below the trigger: nothing.
        assert_eq!(choose(&objs[..4], &cfg()), Choice::Idle);
    }

    #[test]
    fn cleans_by_cost_benefit() {
        // Same fill: the older one first. Same age: the emptier one first.
        let objs = [
            seg(1, 4000, 400, 100),
            seg(2, 4000, 400, 1000),
            seg(3, 4000, 1600, 1000),
            run(4, 4000, 3000, 1000),
        ];
        match choose(&objs, &cfg()) {
            Choice::Rewrite { reason, sources } => {
                assert_eq!(reason, Reason::Clean);
                assert_eq!(
                    sources,
                    vec![ObjectId { epoch: 1, seq: 2 }, ObjectId { epoch: 1, seq: 3 }]
                );
            }
            c => panic!("{c:?}"),
        }
        let rb = 1 << 20;
        assert!(cost_benefit(&objs[1], rb) > cost_benefit(&objs[0], rb));
        assert!(cost_benefit(&objs[1], rb) > cost_benefit(&objs[2], rb));
    }

    #[test]
    fn merges_the_smallest_runs_when_there_are_too_many() {
        let objs = [
            full_run(1, 800),
            full_run(2, 290),
            full_run(3, 190),
            full_run(4, 4900),
        ];
        match choose(&objs, &cfg()) {
            Choice::Rewrite { reason, sources } => {
                assert_eq!(reason, Reason::MergeRuns);
                assert_eq!(sources, vec![ObjectId::run(1, 3), ObjectId::run(1, 2)]);
            }
            c => panic!("{c:?}"),
        }
        assert_eq!(choose(&objs[..3], &cfg()), Choice::Idle);
    }

    #[test]
    fn a_round_reads_at_most_its_budget_but_at_least_one_object() {
        let objs: Vec<_> = (1..=30).map(|i| seg(i, 1000, 900, 100)).collect();
        let Choice::Rewrite { sources, .. } = choose(&objs, &cfg()) else {
            panic!()
        };
        assert_eq!(sources.len(), 10);
        let big = [seg(1, 50_000, 10_000, 100)];
        let Choice::Rewrite { sources, .. } = choose(&big, &cfg()) else {
            panic!()
        };
        assert_eq!(sources.len(), 1);
    }

    #[test]
    fn compact_all_covers_every_movable_object_in_rounds() {
        let mut objs: Vec<_> = (1..=25).map(|i| seg(i, 1000, 500, 0)).collect();
        objs.push(seg(26, 1000, 0, 0));
        objs.push(ObjectStat {
            in_log: true,
            ..seg(27, 1000, 500, 0)
        });
        let rounds = compact_all(&objs, 10_000);
        assert_eq!(rounds.len(), 3);
        assert_eq!(rounds.iter().map(Vec::len).sum::<usize>(), 25);
        assert_eq!(
            unneeded(&objs),
            vec![ObjectId { epoch: 1, seq: 26 }],
            "only dead objects out of the log"
        );
    }

    /// Carry out a rewrite of `sources` as the worker does when nothing else writes:
    /// the sources lose their live data (and are deleted); their keys land in new runs
    /// whose sizes add up to the estimate (the worker writes nothing when the real
    /// runs would not be smaller).
    fn apply(objs: &mut Vec<ObjectStat>, sources: &[ObjectId], next_run: &mut u64, run_bytes: u64) {
        let moved: Vec<ObjectStat> = objs
            .iter()
            .filter(|o| sources.contains(&o.id))
            .cloned()
            .collect();
        objs.retain(|o| !sources.contains(&o.id));
        let stored: u64 = moved.iter().map(|o| o.stored).sum();
        let keys: u64 = moved.iter().map(|o| o.keys).sum();
        if keys == 0 {
            return;
        }
        let key_bytes: u64 = moved.iter().map(|o| o.key_bytes).sum();
        let live: u64 = moved.iter().map(|o| o.live).sum();
        let total = rewritten_size(moved.iter(), run_bytes);
        let n = stored.div_ceil(run_bytes).max(1).min(keys);
        for i in 0..n {
            let share = |x: u64| x / n + u64::from(i < x % n);
            let mut o = ObjectStat {
                id: ObjectId::run(9, *next_run),
                size: 0,
                live: share(live),
                stored: share(stored),
                keys: share(keys),
                key_bytes: share(key_bytes),
                age: Duration::ZERO,
                in_log: false,
            };
            o.size = share(total);
            *next_run += 1;
            objs.push(o);
        }
    }

    fn any_object() -> impl Strategy<Value = ObjectStat> {
        (
            any::<bool>(),
            1u64..1000,
            0u64..200,
            1u64..50,
            0u64..5000,
            0u64..100,
            any::<bool>(),
        )
            .prop_map(|(is_run, seq, keys, key_len, dead, age, in_log)| {
                let stored = keys * (16 + key_len + 40);
                let id = if is_run {
                    ObjectId::run(1, seq)
                } else {
                    ObjectId { epoch: 1, seq }
                };
                let mut o = ObjectStat {
                    id,
                    size: 0,
                    live: keys * (key_len + 40),
                    stored,
                    keys,
                    key_bytes: keys * key_len,
                    age: Duration::from_secs(age),
                    in_log: in_log && !is_run,
                };
                // As written, plus whatever died since.
                o.size = rewritten_size([&o], 1 << 20).max(48) + dead;
                o
            })
    }

    proptest! {
        /// Repeated rounds on any state reach a fixed point, and every clean or merge
        /// lowers the bytes stored.
        #[test]
        fn repeated_rounds_reach_a_fixed_point(
            objs in proptest::collection::vec(any_object(), 0..60),
            fill in 0.1f64..0.95,
            budget in 1_000u64..200_000,
            compact_min in prop_oneof![Just(u64::MAX), 1_000u64..100_000],
            max_runs in 1usize..20,
            run_bytes in prop_oneof![Just(1u64 << 20), 2_000u64..50_000],
        ) {
            let mut objs: Vec<ObjectStat> = objs;
            objs.sort_by_key(|o| o.id);
            objs.dedup_by_key(|o| o.id);
            let cfg = PolicyConfig {
                clean_below_fill: fill,
                min_age: Duration::ZERO,
                max_round_bytes: budget,
                compact_min_bytes: compact_min,
                max_runs,
                run_bytes,
            };
            let movable_bytes = |objs: &[ObjectStat]| -> u64 {
                objs.iter().filter(|o| movable(o)).map(|o| o.size).sum()
            };
            let mut next_run = 1;
            let mut rounds = 0;
            while let Choice::Rewrite { reason, sources } = choose(&objs, &cfg) {
                prop_assert!(!sources.is_empty());
                let before = movable_bytes(&objs);
                let segments_before = objs.iter().filter(|o| movable(o) && !o.id.is_run()).count();
                apply(&mut objs, &sources, &mut next_run, run_bytes);
                let after = movable_bytes(&objs);
                let segments_after = objs.iter().filter(|o| movable(o) && !o.id.is_run()).count();
                match reason {
                    Reason::CompactLog => prop_assert!(segments_after < segments_before),
                    _ => prop_assert!(after < before, "{reason:?}: {before} -> {after}"),
                }
                rounds += 1;
                prop_assert!(rounds < 10_000, "no fixed point after {rounds} rounds");
            }
            // At the fixed point, no run is chosen alone or with others.
            prop_assert_eq!(choose(&objs, &cfg), Choice::Idle);
        }
    }
}
