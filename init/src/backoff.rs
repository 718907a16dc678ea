//! Restarts of a unit: whether its policy restarts it after an exit, and when — backoff of a
//! crashing unit, 100 ms doubling up to 30 s, forgotten once the unit stayed up for 10 s.

use minke_protocol::config::Restart;

/// First restart delay.
pub const INITIAL_MS: u64 = 100;
/// Longest restart delay.
pub const CAP_MS: u64 = 30_000;
/// A run at least this long resets the delay to [`INITIAL_MS`].
pub const STABLE_MS: u64 = 10_000;

/// What the restart policy says about an exit.
pub fn should_restart(policy: Restart, success: bool) -> bool {
    match policy {
        Restart::No => false,
        Restart::OnFailure => !success,
        Restart::Always => true,
    }
}

/// Backoff state of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next_ms: INITIAL_MS,
        }
    }
}

impl Backoff {
    /// The unit ended after running `uptime_ms`: the delay before its restart.
    pub fn delay_after(&mut self, uptime_ms: u64) -> u64 {
        if uptime_ms >= STABLE_MS {
            self.next_ms = INITIAL_MS;
        }
        let delay = self.next_ms;
        self.next_ms = self.next_ms.saturating_mul(2).min(CAP_MS);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..12).map(|_| b.delay_after(5)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
    }

    #[test]
    fn a_stable_run_resets_the_delay() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.delay_after(0);
        }
        assert_eq!(b.delay_after(STABLE_MS - 1), 3200);
        assert_eq!(b.delay_after(STABLE_MS), 100);
        assert_eq!(b.delay_after(0), 200);
    }

    #[test]
    fn restart_policies() {
        assert!(!should_restart(Restart::No, false));
        assert!(should_restart(Restart::OnFailure, false));
        assert!(!should_restart(Restart::OnFailure, true));
        assert!(should_restart(Restart::Always, true));
    }
}
