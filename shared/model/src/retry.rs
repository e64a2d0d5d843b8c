//! Retry policies: a background invocation that failed for a cause its policy calls transient is
//! run again, after an exponential backoff with jitter, until it succeeds or its attempts are
//! spent. Each failed attempt is an `Error` entry in the worker's oplog (so replay skips it, as
//! it skips any failed invocation) and a count in its pending record (so a crash during the
//! backoff loses nothing, and the invocation's status shows it).

use crate::oplog::FailureKind;
use serde::{Deserialize, Serialize};

/// The most runs a policy may ask for.
pub const ATTEMPTS_MAX: u32 = 20;

/// The longest wait between two runs, in ms (a day).
pub const BACKOFF_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// The failures a policy may retry: those whose cause may pass. A divergence, an exit, a
/// result too large or an interrupt would fail again, or were asked for.
const RETRIABLE: &[&str] = &["timeout", "trap", "out_of_fuel", "out_of_memory"];

/// [`RETRIABLE`] as the API's document shows the items of `on`. The policy keeps them as
/// strings, so that an unknown one is answered with the list.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetriableFailure {
    Timeout,
    Trap,
    OutOfFuel,
    OutOfMemory,
}

impl RetriableFailure {
    pub const ALL: [RetriableFailure; 4] = [
        RetriableFailure::Timeout,
        RetriableFailure::Trap,
        RetriableFailure::OutOfFuel,
        RetriableFailure::OutOfMemory,
    ];
}

/// When a failed background invocation runs again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Runs in all, the first included (1 to 20).
    #[schema(minimum = 1, maximum = 20)]
    pub max_attempts: u32,
    /// The wait before the second run, in ms; doubled before each next one (default 1,000;
    /// at most `backoff_max_ms`).
    #[serde(default = "default_backoff_min_ms")]
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub backoff_min_ms: u64,
    /// The longest wait, in ms (default 60,000; at most a day).
    #[serde(default = "default_backoff_max_ms")]
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub backoff_max_ms: u64,
    /// The failure codes retried (default `["timeout"]`): any of `timeout`, `trap`,
    /// `out_of_fuel`, `out_of_memory`.
    #[serde(default = "default_on")]
    #[schema(value_type = Vec<RetriableFailure>)]
    pub on: Vec<String>,
}

fn default_backoff_min_ms() -> u64 {
    1_000
}

fn default_backoff_max_ms() -> u64 {
    60_000
}

fn default_on() -> Vec<String> {
    vec!["timeout".to_string()]
}

impl RetryPolicy {
    /// Why the policy cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=ATTEMPTS_MAX).contains(&self.max_attempts) {
            return Err(format!("max_attempts must be 1 to {ATTEMPTS_MAX}"));
        }
        if self.backoff_min_ms == 0 || self.backoff_min_ms > self.backoff_max_ms {
            return Err("backoff_min_ms must be at least 1 and at most backoff_max_ms".into());
        }
        if self.backoff_max_ms > BACKOFF_MAX_MS {
            return Err(format!("backoff_max_ms must be at most {BACKOFF_MAX_MS}"));
        }
        if let Some(code) = self.on.iter().find(|c| !RETRIABLE.contains(&c.as_str())) {
            return Err(format!(
                "`{code}` cannot be retried; `on` takes {}",
                RETRIABLE.join(", ")
            ));
        }
        Ok(())
    }

    /// Whether a run that failed with `kind`, after `runs` runs in all, is run again.
    pub fn retries(&self, kind: &FailureKind, runs: u32) -> bool {
        runs < self.max_attempts && self.on.iter().any(|c| c == kind.code())
    }

    /// The wait after the `runs`-th run, in ms: the minimum doubled per run before, at most the
    /// maximum, less up to a half at random (so that workers failing together do not retry
    /// together).
    pub fn backoff_ms(&self, runs: u32) -> u64 {
        let doublings = runs.saturating_sub(1).min(40);
        let full = self
            .backoff_min_ms
            .saturating_mul(1_u64 << doublings)
            .min(self.backoff_max_ms);
        let jitter = rand::random::<u64>() % (full / 2 + 1);
        full - jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(max_attempts: u32, min: u64, max: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            backoff_min_ms: min,
            backoff_max_ms: max,
            on: vec!["timeout".into(), "trap".into()],
        }
    }

    #[test]
    fn the_documented_failures_are_the_retriable_ones() {
        let documented: Vec<String> = RetriableFailure::ALL
            .iter()
            .filter_map(|f| serde_json::to_value(f).ok()?.as_str().map(str::to_string))
            .collect();
        assert_eq!(documented, RETRIABLE);
    }

    #[test]
    fn only_transient_failures_are_retried_and_only_so_often() {
        let p = policy(3, 100, 1_000);
        assert!(p.retries(&FailureKind::Timeout, 1));
        assert!(p.retries(&FailureKind::Trap, 2));
        assert!(!p.retries(&FailureKind::Trap, 3), "three runs are all");
        assert!(!p.retries(&FailureKind::OutOfFuel, 1), "not in `on`");
        assert!(!p.retries(&FailureKind::Interrupted, 1));
        let mut bad = p.clone();
        bad.on = vec!["interrupted".into()];
        assert!(bad.check().is_err());
        assert!(policy(0, 1, 1).check().is_err());
        assert!(policy(21, 1, 1).check().is_err());
        assert!(policy(2, 10, 5).check().is_err());
        assert!(policy(2, 1, BACKOFF_MAX_MS + 1).check().is_err());
        assert!(p.check().is_ok());
    }

    proptest! {
        #[test]
        fn backoff_grows_within_its_bounds(
            min in 1_u64..10_000,
            extra in 0_u64..1_000_000,
            runs in 1_u32..1_000,
        ) {
            let p = policy(ATTEMPTS_MAX, min, min + extra);
            let wait = p.backoff_ms(runs);
            let full = min.saturating_mul(1_u64 << (runs - 1).min(40)).min(min + extra);
            prop_assert!(wait <= full, "{wait} > {full}");
            prop_assert!(wait >= full - full / 2, "{wait} < half of {full}");
        }
    }
}
