//! The one source of "now" for everything that decides by the date: the
//! scheduler, idempotency periods, retention, `status` freshness, the drill,
//! the dates in backup names. Production reads the system clock
//! ([`Clock::system`]); the year simulation (`tests/year.rs`) and tests drive
//! a [`ManualClock`] instead, so months pass in seconds without sleeping.
//!
//! Durations (timeouts, leases renewed on a timer, backoff) stay on
//! `tokio::time`: they measure how long this process waits, not the date.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// Where "now" comes from. Cheap to clone; all clones read the same source.
#[derive(Clone)]
pub struct Clock {
    now: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
    system: bool,
}

impl Clock {
    /// The system clock: production.
    pub fn system() -> Clock {
        Clock {
            now: Arc::new(Utc::now),
            system: true,
        }
    }

    /// Any function of no arguments (a test pinning a date).
    pub fn from_fn(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock {
            now: Arc::new(now),
            system: false,
        }
    }

    /// A clock stopped at `at`.
    pub fn fixed(at: DateTime<Utc>) -> Clock {
        Clock::from_fn(move || at)
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.now)()
    }

    /// Whether this is the system clock (the ledger then keeps the
    /// database's own clock, which every worker shares).
    pub fn is_system(&self) -> bool {
        self.system
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the time: reading a simulated host's clock moves it on.
        formatter.write_str(if self.system { "Clock(system)" } else { "Clock(manual)" })
    }
}

/// A clock moved by hand. [`ManualClock::clock`] hands out [`Clock`]s that
/// follow it, optionally off by a skew (a host whose clock jumped).
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

#[derive(Debug, Clone, Copy)]
struct ManualState {
    now: DateTime<Utc>,
    skew: Duration,
    /// How far the true time moves on every read of a skewed clock.
    host_tick: Duration,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock {
            state: Arc::new(Mutex::new(ManualState {
                now: at,
                skew: Duration::zero(),
                host_tick: Duration::zero(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ManualState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The true time.
    pub fn now(&self) -> DateTime<Utc> {
        self.lock().now
    }

    pub fn set(&self, at: DateTime<Utc>) {
        self.lock().now = at;
    }

    pub fn advance(&self, by: Duration) {
        self.lock().now += by;
    }

    /// Moves to `at` unless the clock is already past it.
    pub fn advance_to(&self, at: DateTime<Utc>) {
        let mut state = self.lock();
        state.now = state.now.max(at);
    }

    /// The true time: what servers (the store, the database, Pub/Sub) read.
    pub fn clock(&self) -> Clock {
        let manual = self.clone();
        Clock::from_fn(move || manual.now())
    }

    /// The true time plus the current skew ([`ManualClock::set_skew`]): what
    /// a host whose clock is wrong reads. Each read moves the true time on by
    /// the host tick ([`ManualClock::set_host_tick`]).
    pub fn skewed_clock(&self) -> Clock {
        let manual = self.clone();
        Clock::from_fn(move || {
            let mut state = manual.lock();
            let now = state.now + state.skew;
            let tick = state.host_tick;
            state.now += tick;
            now
        })
    }

    /// Time passing while the host works: every read of a skewed clock moves
    /// the true time on by `tick`, so two jobs never start in the same second
    /// although nothing sleeps.
    pub fn set_host_tick(&self, tick: Duration) {
        self.lock().host_tick = tick;
    }

    /// How far the skewed clocks are off the true time from now on.
    pub fn set_skew(&self, skew: Duration) {
        self.lock().skew = skew;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clocks_follow_their_source_and_skew_only_the_skewed_view() {
        let start = DateTime::parse_from_rfc3339("2026-12-20T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let manual = ManualClock::new(start);
        let (server, host) = (manual.clock(), manual.skewed_clock());
        manual.advance(Duration::hours(25));
        assert_eq!(server.now(), start + Duration::hours(25));
        assert_eq!(host.now(), server.now());
        manual.set_skew(Duration::days(40));
        assert_eq!(server.now(), start + Duration::hours(25));
        assert_eq!(host.now(), start + Duration::hours(25) + Duration::days(40));
        assert!(!host.is_system());
        manual.set_host_tick(Duration::seconds(1));
        let before = server.now();
        let read = host.now();
        assert_eq!(read, before + Duration::days(40));
        assert_eq!(server.now(), before + Duration::seconds(1), "a host read moves time on");
        manual.advance_to(before);
        assert_eq!(server.now(), before + Duration::seconds(1), "never backwards");
        assert!(Clock::system().is_system());
        let drift = (Clock::system().now() - Utc::now()).num_seconds().abs();
        assert!(drift < 5);
    }
}
