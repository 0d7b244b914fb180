//! Counted admission: how many connections are open (or being upgraded) and how many
//! wait for their `auth` frame, each under its cap. A [`Held`] place is given back when
//! it is dropped, whichever way the connection ends, so a count cannot leak.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A count of places held at once.
#[derive(Default)]
pub struct Places(Arc<AtomicUsize>);

/// One place of a [`Places`] count, given back on drop.
pub struct Held(Arc<AtomicUsize>);

impl Places {
    /// Takes a place unless `max` are held already.
    pub fn try_take(&self, max: usize) -> Option<Held> {
        if self.0.fetch_add(1, Ordering::Relaxed) >= max {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Held(self.0.clone()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_and_given_back_on_drop() {
        let places = Places::default();
        let a = places.try_take(2).expect("first");
        let b = places.try_take(2).expect("second");
        assert!(places.try_take(2).is_none(), "the cap holds");
        drop(a);
        let c = places.try_take(2).expect("a dropped place is free again");
        assert!(places.try_take(2).is_none());
        drop((b, c));
        assert!(places.try_take(0).is_none(), "a cap of 0 admits nobody");
        assert_eq!(
            places.0.load(Ordering::Relaxed),
            0,
            "a refusal holds nothing"
        );
    }
}
