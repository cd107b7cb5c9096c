//! Bounds on parked long-polls. A waiting bundle request holds no database connection, but it
//! holds a task, a socket and a watch subscription; without a bound one client (or a fleet
//! reconnecting at once) could hold as many as it likes. Past either bound the request is
//! answered 503 with `Retry-After` at once, and nothing is parked.

use std::collections::HashMap;
use std::sync::Mutex;

use super::ApiError;

/// How many long-polls may wait at once, in all and per token.
#[derive(Debug)]
pub struct Parking {
    max_total: usize,
    max_per_token: usize,
    /// Waiting requests per token name; the sum is the total.
    waiting: Mutex<(usize, HashMap<String, usize>)>,
}

/// One parked request's place; given back when dropped, however the wait ends.
#[derive(Debug)]
pub struct Parked<'a> {
    parking: &'a Parking,
    token: String,
}

impl Parking {
    #[must_use]
    pub fn new(max_total: usize, max_per_token: usize) -> Self {
        Self {
            max_total,
            max_per_token,
            waiting: Mutex::default(),
        }
    }

    /// A place for one more waiting request of `token`, or the refusal to answer.
    pub fn park(&self, token: &str) -> Result<Parked<'_>, ApiError> {
        // The counts are consistent after every statement: keep using them after a panic.
        let mut guard = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_token) = &mut *guard;
        if *total >= self.max_total {
            return Err(ApiError::Overloaded(
                "too many bundle requests are waiting; retry later",
            ));
        }
        let mine = per_token.entry(token.to_owned()).or_insert(0);
        if *mine >= self.max_per_token {
            return Err(ApiError::Overloaded(
                "too many bundle requests of this token are waiting; retry later",
            ));
        }
        *mine += 1;
        *total += 1;
        Ok(Parked {
            parking: self,
            token: token.to_owned(),
        })
    }

    /// Requests waiting now: in all, and of `token`.
    #[must_use]
    pub fn waiting(&self, token: &str) -> (usize, usize) {
        let guard = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        (guard.0, guard.1.get(token).copied().unwrap_or(0))
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        let mut guard = self
            .parking
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (total, per_token) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = per_token.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_token.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_all_and_per_token_and_given_back() {
        let p = Parking::new(3, 2);
        let a1 = p.park("a");
        let a2 = p.park("a");
        assert!(a1.is_ok() && a2.is_ok());
        assert!(
            matches!(p.park("a"), Err(ApiError::Overloaded(_))),
            "per token"
        );
        let b1 = p.park("b");
        assert!(b1.is_ok());
        assert!(
            matches!(p.park("c"), Err(ApiError::Overloaded(_))),
            "in all"
        );
        assert_eq!(p.waiting("a"), (3, 2));
        drop(a1);
        assert_eq!(p.waiting("a"), (2, 1));
        assert!(p.park("c").is_ok());
        drop((a2, b1));
        assert_eq!(p.waiting("a"), (0, 0));
    }
}
