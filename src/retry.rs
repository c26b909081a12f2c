//! The one retry policy: exponential backoff with "equal jitter" (half of
//! each step fixed, half random, so waits keep growing while clients that
//! failed together do not retry in lockstep), in named profiles. Every
//! retry loop in the crate takes its waits from here, and each layer
//! retries only what the layer below it cannot: the cluster retry layer
//! repeats requests, a stage's `retries:` repeats the whole stage, and an
//! operation that streams (an S3 range, a registry blob, a watch) resumes
//! itself with the SDK's or client's own retries off for that request.
//!
//! [`Backoff::waits`] is an iterator of waits, the form `kube::runtime`'s
//! watcher backoff takes, so watches back off by the same profiles.

use std::time::Duration;

/// How hard to try: `attempts` in all, the first included; the wait before
/// retry `n` is about `base * 2^(n-1)`, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub attempts: u32,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Backoff {
    /// A stage's own attempts (its `retries:`), after everything inside it
    /// gave up: 1 s doubling to a minute.
    pub const STAGE: Backoff = Backoff { base: ms(1000), cap: ms(60_000), attempts: 1 };
    /// Kubernetes API requests (the cluster retry layer) and build starts:
    /// 6 attempts over about 3 to 6 seconds.
    pub const API: Backoff = Backoff { base: ms(200), cap: ms(5000), attempts: 6 };
    /// Re-establishing a watch after the API server went away (the requests
    /// inside are retried by the layer already): 16 to 33 s of waits in all.
    pub const WATCH: Backoff = Backoff { base: ms(500), cap: ms(5000), attempts: 10 };
    /// Registry requests (before any body streams) and blob transfers.
    pub const REGISTRY: Backoff = Backoff { base: ms(100), cap: ms(5000), attempts: 6 };
    /// Resuming an interrupted S3 download with a ranged GET.
    pub const DOWNLOAD: Backoff = Backoff { base: ms(100), cap: ms(3200), attempts: 5 };
    /// Optimistic writes that lost a race on a ConfigMap (409): with N
    /// writers on one object, retries must spread over about N write
    /// round-trips or they keep colliding, hence the high cap.
    pub const CONFLICT: Backoff = Backoff { base: ms(10), cap: ms(2000), attempts: 200 };
    /// Compare-and-swap on a local file lost to another process: a few
    /// milliseconds spread the losers.
    pub const LOCAL_CONFLICT: Backoff = Backoff { base: ms(1), cap: ms(20), attempts: 200 };
    /// Waiting for something to become true before a deadline (the
    /// promotion lock, a model server's readiness): the deadline ends it.
    pub const POLL: Backoff = Backoff { base: ms(100), cap: ms(2000), attempts: u32::MAX };

    pub const fn with_attempts(self, attempts: u32) -> Backoff {
        Backoff { attempts, ..self }
    }

    pub const fn with_cap(self, cap: Duration) -> Backoff {
        Backoff { cap, ..self }
    }

    /// The wait before retry `retry` (1-based: after the first failed attempt).
    pub fn delay(&self, retry: u32) -> Duration {
        let step = self.base.saturating_mul(1u32 << retry.saturating_sub(1).min(16)).min(self.cap);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// As [`Backoff::delay`], but at least the server's `Retry-After`, which
    /// is cut to `max` so a server cannot park a client for an hour.
    pub fn delay_after(&self, retry: u32, retry_after: Option<Duration>, max: Duration) -> Duration {
        let backoff = self.delay(retry);
        retry_after.map_or(backoff, |ra| ra.min(max).max(backoff))
    }

    /// The waits between the attempts: `attempts - 1` of them.
    pub fn waits(&self) -> Waits {
        Waits { policy: *self, retry: 0 }
    }
}

/// The waits of a [`Backoff`], one per retry.
#[derive(Debug, Clone)]
pub struct Waits {
    policy: Backoff,
    retry: u32,
}

impl Iterator for Waits {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        if self.retry.saturating_add(1) >= self.policy.attempts {
            return None;
        }
        self.retry += 1;
        Some(self.policy.delay(self.retry))
    }
}

/// A watch that delivered an event starts its budget afresh.
impl kube::runtime::utils::Backoff for Waits {
    fn reset(&mut self) {
        self.retry = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_equal_jitter_and_stop_at_the_budget() {
        let b = Backoff { base: ms(100), cap: ms(1000), attempts: 5 };
        for retry in 1..=6 {
            let step = (ms(100) * 2u32.pow(retry - 1)).min(ms(1000));
            let d = b.delay(retry);
            assert!(d >= step / 2 && d <= step, "retry {retry}: {d:?} not in [{:?}, {step:?}]", step / 2);
        }
        assert_eq!(b.waits().count(), 4, "5 attempts, 4 waits");
        assert_eq!(Backoff::STAGE.with_attempts(1).waits().count(), 0);
        assert!(b.delay(u32::MAX) <= ms(1000), "no overflow");
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let b = Backoff::API;
        assert!(b.delay_after(1, Some(ms(3000)), ms(30_000)) >= ms(3000));
        assert!(b.delay_after(1, Some(ms(3_600_000)), ms(30_000)) <= ms(30_000));
    }

    #[test]
    fn a_watch_budget_restarts_after_an_event() {
        use kube::runtime::utils::Backoff as _;
        let mut w = Backoff::WATCH.with_attempts(3).waits();
        assert!(w.next().is_some() && w.next().is_some() && w.next().is_none());
        w.reset();
        assert!(w.next().is_some());
    }
}
