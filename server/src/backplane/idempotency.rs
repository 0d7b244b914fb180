//! The in-memory backplane's record of idempotency keys used by the server API's publish:
//! (room, key) → the first publish's position, for a fixed time. Bounded in entries; when
//! full, the oldest keys are forgotten first (a retry after that publishes again). Pure:
//! the caller passes the clock.

use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
pub struct IdempotencyCache {
    /// (room, key) → (epoch, offset, expires at ms).
    entries: HashMap<(String, String), (String, u64, u64)>,
    /// Insertion order, which is also expiry order (one TTL for every key).
    order: VecDeque<(String, String)>,
    max_entries: usize,
}

impl IdempotencyCache {
    pub fn new(max_entries: usize) -> Self {
        IdempotencyCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            max_entries: max_entries.max(1),
        }
    }

    /// The position recorded for `key` in `room`, if it has not expired by `now_ms`.
    pub fn get(&mut self, room: &str, key: &str, now_ms: u64) -> Option<(String, u64)> {
        self.expire(now_ms);
        self.entries
            .get(&(room.to_owned(), key.to_owned()))
            .map(|(epoch, offset, _)| (epoch.clone(), *offset))
    }

    /// Records a publish; forgets the oldest keys beyond the bound.
    pub fn insert(&mut self, room: &str, key: &str, epoch: &str, offset: u64, expires_ms: u64) {
        let id = (room.to_owned(), key.to_owned());
        if self
            .entries
            .insert(id.clone(), (epoch.to_owned(), offset, expires_ms))
            .is_none()
        {
            self.order.push_back(id);
        }
        while self.entries.len() > self.max_entries {
            self.forget_oldest();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(id) = self.order.front() {
            match self.entries.get(id) {
                Some((_, _, expires)) if *expires > now_ms => break,
                _ => self.forget_oldest(),
            }
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(id) = self.order.pop_front() {
            self.entries.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_answers_until_it_expires_and_only_for_its_room() {
        let mut cache = IdempotencyCache::new(10);
        cache.insert("lobby", "k1", "e", 7, 1_000);
        assert_eq!(cache.get("lobby", "k1", 999), Some(("e".into(), 7)));
        assert_eq!(cache.get("other", "k1", 999), None);
        assert_eq!(cache.get("lobby", "k2", 999), None);
        assert_eq!(cache.get("lobby", "k1", 1_000), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_oldest_keys_go_first_beyond_the_bound() {
        let mut cache = IdempotencyCache::new(2);
        cache.insert("r", "a", "e", 1, 100);
        cache.insert("r", "b", "e", 2, 100);
        cache.insert("r", "c", "e", 3, 100);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("r", "a", 0), None);
        assert_eq!(cache.get("r", "b", 0), Some(("e".into(), 2)));
        assert_eq!(cache.get("r", "c", 0), Some(("e".into(), 3)));
    }
}
