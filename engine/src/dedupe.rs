//! Exact `(drone_id, seq)` dedupe with memory proportional to the gaps, not to the reports.
//!
//! Each drone keeps the sequence numbers it has stored as a set of disjoint ranges
//! (`[start, end]`, with the newest report time inside the range). A drone sending in order keeps a
//! single range whatever its history; out-of-order arrival costs one range per gap until the gap
//! fills. Ranges whose newest report time is older than the drone's newest time minus the window are
//! forgotten by [`DedupeIndex::evict`]: dedupe is exact for every report whose time is within the
//! window of its drone's newest report (and beyond it, for as long as its range is still held).

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy)]
struct SeqRange {
    end: u64,
    max_time: i64,
}

#[derive(Debug, Default)]
struct DroneSeqs {
    newest_time: i64,
    /// start → range; ranges are disjoint and never adjacent (adjacent ones are merged).
    ranges: BTreeMap<u64, SeqRange>,
}

impl DroneSeqs {
    fn insert(&mut self, seq: u64, time: i64) -> bool {
        self.newest_time = self.newest_time.max(time);
        // The range starting at or before `seq`.
        let below = self.ranges.range(..=seq).next_back().map(|(s, r)| (*s, *r));
        if let Some((_, r)) = below
            && seq <= r.end
        {
            return false;
        }
        let joins_below = below.filter(|(_, r)| r.end.checked_add(1) == Some(seq));
        let above = seq
            .checked_add(1)
            .and_then(|next| self.ranges.get(&next).map(|r| (next, *r)));
        match (joins_below, above) {
            (Some((start, r)), Some((next, up))) => {
                self.ranges.remove(&next);
                self.ranges.insert(
                    start,
                    SeqRange {
                        end: up.end,
                        max_time: r.max_time.max(up.max_time).max(time),
                    },
                );
            }
            (Some((start, r)), None) => {
                self.ranges.insert(
                    start,
                    SeqRange {
                        end: seq,
                        max_time: r.max_time.max(time),
                    },
                );
            }
            (None, Some((next, up))) => {
                self.ranges.remove(&next);
                self.ranges.insert(
                    seq,
                    SeqRange {
                        end: up.end,
                        max_time: up.max_time.max(time),
                    },
                );
            }
            (None, None) => {
                self.ranges.insert(
                    seq,
                    SeqRange {
                        end: seq,
                        max_time: time,
                    },
                );
            }
        }
        true
    }
}

/// The set of stored `(drone_id, seq)` keys within the dedupe window.
#[derive(Debug, Default)]
pub(crate) struct DedupeIndex {
    drones: HashMap<Box<str>, DroneSeqs>,
}

impl DedupeIndex {
    /// Records `(drone_id, seq)` reported at `time_micros`; false if it was already recorded.
    pub(crate) fn insert(&mut self, drone_id: &str, seq: u64, time_micros: i64) -> bool {
        match self.drones.get_mut(drone_id) {
            Some(d) => d.insert(seq, time_micros),
            None => {
                let mut d = DroneSeqs::default();
                d.insert(seq, time_micros);
                self.drones.insert(drone_id.into(), d);
                true
            }
        }
    }

    /// Forgets ranges whose newest report is older than their drone's newest minus `window_micros`.
    pub(crate) fn evict(&mut self, window_micros: i64) {
        self.drones.retain(|_, d| {
            let cutoff = d.newest_time.saturating_sub(window_micros);
            d.ranges.retain(|_, r| r.max_time >= cutoff);
            !d.ranges.is_empty()
        });
    }

    /// Number of drones and of ranges held (the memory used is about 64 bytes per range plus the
    /// drone ids).
    pub(crate) fn size(&self) -> (usize, usize) {
        (
            self.drones.len(),
            self.drones.values().map(|d| d.ranges.len()).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_keeps_one_range() {
        let mut ix = DedupeIndex::default();
        for s in 0..1000 {
            assert!(ix.insert("a", s, s as i64));
        }
        assert_eq!(ix.size(), (1, 1));
        assert!(!ix.insert("a", 500, 0));
        assert!(ix.insert("b", 500, 0));
    }

    #[test]
    fn any_order_is_exact_and_merges() {
        let mut ix = DedupeIndex::default();
        // A fixed permutation of 0..200 (multiplication by a unit modulo 200).
        let order: Vec<u64> = (0..200u64).map(|i| (i * 77) % 200).collect();
        for &s in &order {
            assert!(ix.insert("d", s, 0), "first {s}");
        }
        for &s in &order {
            assert!(!ix.insert("d", s, 0), "again {s}");
        }
        assert_eq!(ix.size(), (1, 1));
        assert!(ix.insert("d", u64::MAX, 0));
        assert!(!ix.insert("d", u64::MAX, 0));
        assert!(ix.insert("d", u64::MAX - 1, 0));
        assert_eq!(ix.size(), (1, 2));
    }

    #[test]
    fn evicts_only_old_ranges() {
        let mut ix = DedupeIndex::default();
        ix.insert("d", 1, 0);
        ix.insert("d", 10, 100);
        ix.insert("d", 20, 1_000);
        ix.evict(500);
        assert_eq!(ix.size(), (1, 1));
        assert!(ix.insert("d", 1, 0), "forgotten after the window");
        assert!(!ix.insert("d", 20, 0), "still held");
    }
}
