//! What to clean or compact next: a pure function of the store's state.
//!
//! [`choose`] looks at every data object (size, live bytes, age, whether recovery
//! still reads it as log) and returns one [`Choice`]. It does no I/O and reads no
//! clock, so it is tested on its own; `gc::worker` carries the choice out.
//!
//! Rules, in order:
//! 1. **Compact the log**: once old log segments (at least `min_age`, out of the
//!    replay window) hold `compact_min_bytes` of live data, rewrite them, oldest first,
//!    into sorted runs. This is what makes a directory contiguous.
//! 2. **Clean**: objects whose fill (live / size) is below `clean_below_fill`, ranked
//!    by the LFS cost-benefit score `(1 - u) * age / (1 + u)`: free space gained,
//!    weighted by how long the data has stayed live, per byte copied.
//! 3. **Merge runs**: with more than `max_runs` runs, merge the smallest ones (by
//!    live bytes) into one, so a key range is spread over few runs.
//!
//! Each choice reads at most `max_round_bytes` of objects. An object that is in the
//! replay window, or has no live data (it only waits for deletion), is never chosen.

use std::time::Duration;

use crate::format::names::SegmentId;

/// What the policy knows about one data object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectStat {
    pub id: SegmentId,
    /// Object size in bytes.
    pub size: u64,
    /// Key and value bytes of live keys whose value lies in the object.
    pub live: u64,
    /// Time since the object was written (or since this process first saw it).
    pub age: Duration,
    /// Recovery still replays it as part of the log (current manifest's ranges).
    pub in_log: bool,
}

impl ObjectStat {
    /// Live fraction, 0..=1.
    pub fn fill(&self) -> f64 {
        if self.size == 0 {
            return 0.0;
        }
        (self.live as f64 / self.size as f64).min(1.0)
    }
}

/// Thresholds of the policy (from [`crate::db::GcOptions`]).
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub clean_below_fill: f64,
    pub min_age: Duration,
    pub max_round_bytes: u64,
    pub compact_min_bytes: u64,
    pub max_runs: usize,
}

impl From<&crate::db::GcOptions> for PolicyConfig {
    fn from(o: &crate::db::GcOptions) -> Self {
        PolicyConfig {
            clean_below_fill: o.clean_below_fill,
            min_age: o.min_age,
            max_round_bytes: o.max_round_bytes,
            compact_min_bytes: o.compact_min_bytes,
            max_runs: o.max_runs,
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
        sources: Vec<SegmentId>,
    },
}

/// Objects that may be rewritten at all: out of the log window, with live data.
fn movable(o: &ObjectStat) -> bool {
    !o.in_log && o.live > 0
}

/// Take objects in the given order until `budget` bytes of objects are reached (at
/// least one object, so an object larger than the budget still gets its turn).
fn take_budget<'a>(objs: impl Iterator<Item = &'a ObjectStat>, budget: u64) -> Vec<SegmentId> {
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

/// LFS cost-benefit: `(1 - u) * age / (1 + u)`.
pub fn cost_benefit(o: &ObjectStat) -> f64 {
    let u = o.fill();
    (1.0 - u) * o.age.as_secs_f64() / (1.0 + u)
}

/// The next rewrite the background worker should do.
pub fn choose(objects: &[ObjectStat], cfg: &PolicyConfig) -> Choice {
    // 1. Old log segments into runs.
    let mut old_segments: Vec<&ObjectStat> = objects
        .iter()
        .filter(|o| !o.id.is_run() && movable(o) && o.age >= cfg.min_age)
        .collect();
    let log_live: u64 = old_segments.iter().map(|o| o.live).sum();
    if log_live >= cfg.compact_min_bytes && !old_segments.is_empty() {
        old_segments.sort_by_key(|o| o.id);
        return Choice::Rewrite {
            reason: Reason::CompactLog,
            sources: take_budget(old_segments.into_iter(), cfg.max_round_bytes),
        };
    }
    // 2. Mostly dead objects, best cost-benefit first.
    let mut victims: Vec<&ObjectStat> = objects
        .iter()
        .filter(|o| movable(o) && o.age >= cfg.min_age && o.fill() < cfg.clean_below_fill)
        .collect();
    if !victims.is_empty() {
        victims.sort_by(|a, b| {
            cost_benefit(b)
                .total_cmp(&cost_benefit(a))
                .then(a.id.cmp(&b.id))
        });
        return Choice::Rewrite {
            reason: Reason::Clean,
            sources: take_budget(victims.into_iter(), cfg.max_round_bytes),
        };
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
        if sources.len() >= 2 {
            return Choice::Rewrite {
                reason: Reason::MergeRuns,
                sources,
            };
        }
    }
    Choice::Idle
}

/// On demand: every object with live data out of the log window, in rounds of at
/// most `max_round_bytes` of objects (one round, one sorted output, when it fits).
pub fn compact_all(objects: &[ObjectStat], max_round_bytes: u64) -> Vec<Vec<SegmentId>> {
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
pub fn unneeded(objects: &[ObjectStat]) -> Vec<SegmentId> {
    objects
        .iter()
        .filter(|o| o.live == 0 && !o.in_log)
        .map(|o| o.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            clean_below_fill: 0.5,
            min_age: Duration::from_secs(30),
            max_round_bytes: 10_000,
            compact_min_bytes: 5_000,
            max_runs: 3,
        }
    }

    fn seg(seq: u64, size: u64, live: u64, age: u64) -> ObjectStat {
        ObjectStat {
            id: SegmentId { epoch: 1, seq },
            size,
            live,
            age: Duration::from_secs(age),
            in_log: false,
        }
    }

    fn run(seq: u64, size: u64, live: u64, age: u64) -> ObjectStat {
        ObjectStat {
            id: SegmentId::run(1, seq),
            ..seg(seq, size, live, age)
        }
    }

    #[test]
    fn idle_when_nothing_to_do() {
        assert_eq!(choose(&[], &cfg()), Choice::Idle);
        // Full, young, or in the log: left alone.
        let objs = [
            seg(1, 1000, 950, 100),
            seg(2, 1000, 10, 5),
            ObjectStat {
                in_log: true,
                ..seg(3, 1000, 10, 100)
            },
        ];
        assert_eq!(choose(&objs, &cfg()), Choice::Idle);
    }

    #[test]
    fn compacts_old_segments_once_they_hold_enough_live_data() {
        let objs: Vec<_> = (1..=8).map(|i| seg(i, 1000, 900, 100)).collect();
        match choose(&objs, &cfg()) {
            Choice::Rewrite { reason, sources } => {
                assert_eq!(reason, Reason::CompactLog);
                // Oldest first, within the round budget.
                assert_eq!(sources.len(), 8);
                assert_eq!(sources[0], SegmentId { epoch: 1, seq: 1 });
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
                    vec![
                        SegmentId { epoch: 1, seq: 2 },
                        SegmentId { epoch: 1, seq: 3 }
                    ]
                );
            }
            c => panic!("{c:?}"),
        }
        assert!(cost_benefit(&objs[1]) > cost_benefit(&objs[0]));
        assert!(cost_benefit(&objs[1]) > cost_benefit(&objs[2]));
    }

    #[test]
    fn merges_the_smallest_runs_when_there_are_too_many() {
        let objs = [
            run(1, 900, 800, 10),
            run(2, 300, 290, 10),
            run(3, 200, 190, 10),
            run(4, 5000, 4900, 10),
        ];
        match choose(&objs, &cfg()) {
            Choice::Rewrite { reason, sources } => {
                assert_eq!(reason, Reason::MergeRuns);
                assert_eq!(sources, vec![SegmentId::run(1, 3), SegmentId::run(1, 2)]);
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
            vec![SegmentId { epoch: 1, seq: 26 }],
            "only dead objects out of the log"
        );
    }
}
