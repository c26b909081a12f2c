//! Replay protection: delivery ids seen recently, bounded by count and age.
//! A captured, validly signed request sent again is refused; so is a
//! duplicate arriving while the first is still being handled.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    ttl: Duration,
    seen: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl ReplayGuard {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ReplayGuard { capacity: capacity.max(1), ttl, seen: HashMap::new(), order: VecDeque::new() }
    }

    /// Record `id`; `false` if it was seen within the window.
    pub fn check_and_insert(&mut self, id: &str, now: Instant) -> bool {
        self.expire(now);
        if self.seen.contains_key(id) {
            return false;
        }
        while self.seen.len() >= self.capacity {
            self.pop_oldest();
        }
        self.seen.insert(id.to_string(), now);
        self.order.push_back((id.to_string(), now));
        true
    }

    /// Forget `id` (its delivery was refused before anything ran, so a
    /// redelivery of it must be allowed).
    pub fn forget(&mut self, id: &str) {
        if self.seen.remove(id).is_some() {
            self.order.retain(|(i, _)| i != id);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((id, at)) = self.order.pop_front()
            && self.seen.get(&id) == Some(&at)
        {
            self.seen.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_refused_within_the_window() {
        let t0 = Instant::now();
        let mut g = ReplayGuard::new(3, Duration::from_secs(60));
        assert!(g.check_and_insert("a", t0));
        assert!(!g.check_and_insert("a", t0 + Duration::from_secs(1)));
        assert!(g.check_and_insert("a", t0 + Duration::from_secs(61)), "expired after the ttl");
    }

    #[test]
    fn capacity_bounds_memory_oldest_first() {
        let t0 = Instant::now();
        let mut g = ReplayGuard::new(2, Duration::from_secs(60));
        assert!(g.check_and_insert("a", t0));
        assert!(g.check_and_insert("b", t0));
        assert!(g.check_and_insert("c", t0));
        assert_eq!(g.len(), 2);
        assert!(!g.check_and_insert("c", t0));
        assert!(g.check_and_insert("a", t0), "a was evicted");
    }

    #[test]
    fn forget_allows_redelivery_and_keeps_bounds() {
        let t0 = Instant::now();
        let mut g = ReplayGuard::new(2, Duration::from_secs(60));
        assert!(g.check_and_insert("a", t0));
        g.forget("a");
        assert!(g.check_and_insert("a", t0 + Duration::from_secs(1)));
        assert!(g.check_and_insert("b", t0 + Duration::from_secs(2)));
        assert!(g.check_and_insert("c", t0 + Duration::from_secs(3)));
        assert_eq!(g.len(), 2);
        assert!(!g.check_and_insert("b", t0 + Duration::from_secs(4)));
    }
}
