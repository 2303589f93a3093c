//! A small map whose entries expire and whose size is bounded, for the two things the stateless
//! Flight SQL service still remembers for a while:
//! - the physical plans GetFlightInfo made, until the matching DoGet (a query is planned once);
//! - the parameters bound through DoPut, for clients that keep using the handle they got from
//!   CreatePreparedStatement instead of the one DoPut returns (pre-15 Flight SQL clients such as
//!   `flightsql-dbapi`).
//!
//! Losing an entry is never wrong: a ticket is planned again from its SQL, and a client that
//! lost its binding gets an error asking to bind again.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// At most `capacity` entries, each kept at most `ttl` after it was inserted.
pub(crate) struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps `value` under `key`, dropping expired entries, then the oldest ones over capacity.
    pub(crate) fn insert(&self, key: K, value: V) {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        entries.retain(|_, (created, _)| now.duration_since(*created) < self.ttl);
        while entries.len() >= self.capacity {
            let oldest = entries
                .iter()
                .min_by_key(|(_, (created, _))| *created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => entries.remove(&k),
                None => break,
            };
        }
        entries.insert(key, (now, value));
    }

    /// The value under `key`, removed.
    pub(crate) fn take(&self, key: &K) -> Option<V> {
        let (created, value) = self.entries.lock().remove(key)?;
        (created.elapsed() < self.ttl).then_some(value)
    }

    /// The value under `key`, kept.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock();
        let (created, value) = entries.get(key)?;
        (created.elapsed() < self.ttl).then(|| value.clone())
    }

    /// Forgets `key`.
    pub(crate) fn remove(&self, key: &K) {
        self.entries.lock().remove(key);
    }

    /// How many entries are held (expired ones included until the next insert).
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_taken_once_and_bounded_in_count_and_age() {
        let cache = TtlCache::new(2, Duration::from_secs(60));
        cache.insert(1, "a");
        cache.insert(2, "b");
        cache.insert(3, "c");
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&1), None, "the oldest is evicted");
        assert_eq!(cache.get(&2), Some("b"));
        assert_eq!(cache.take(&2), Some("b"));
        assert_eq!(cache.take(&2), None, "taken once");
        cache.remove(&3);
        assert_eq!(cache.get(&3), None);

        let cache = TtlCache::new(8, Duration::ZERO);
        cache.insert(1, "a");
        assert_eq!(cache.get(&1), None, "expired");
        assert_eq!(cache.take(&1), None, "expired");
    }
}
