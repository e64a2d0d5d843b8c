//! The keys of the usage counters a worker's commits add to: its tenant's month counters and its
//! component's hourly ledger. A worker commits many invocations an hour, so its keys are packed
//! once an hour, not once a commit.

use invicta_model::usage;

/// A worker's usage keys for one hour (and the month it lies in: months begin on the hour).
pub(crate) struct UsageKeys {
    hour: u64,
    pub month_fuel: Vec<u8>,
    pub month_invocations: Vec<u8>,
    pub invocations: Vec<u8>,
    pub fuel: Vec<u8>,
    pub wall_us: Vec<u8>,
    pub memory_kib_ms: Vec<u8>,
    pub oplog_bytes: Vec<u8>,
    pub http_requests: Vec<u8>,
    pub http_request_bytes: Vec<u8>,
    pub http_response_bytes: Vec<u8>,
}

impl UsageKeys {
    fn new(tenant: &str, component: &str, now_ms: u64) -> UsageKeys {
        let hour = usage::hour_of(now_ms);
        let month = usage::month_of(now_ms);
        let ledger = |kind| usage::ledger_key(tenant, hour, component, kind);
        UsageKeys {
            hour,
            month_fuel: usage::month_key(tenant, usage::FUEL, &month),
            month_invocations: usage::month_key(tenant, usage::INVOCATIONS, &month),
            invocations: ledger(usage::INVOCATIONS),
            fuel: ledger(usage::FUEL),
            wall_us: ledger(usage::WALL_US),
            memory_kib_ms: ledger(usage::MEMORY_KIB_MS),
            oplog_bytes: ledger(usage::OPLOG_BYTES),
            http_requests: ledger(usage::HTTP_REQUESTS),
            http_request_bytes: ledger(usage::HTTP_REQUEST_BYTES),
            http_response_bytes: ledger(usage::HTTP_RESPONSE_BYTES),
        }
    }
}

/// One worker's usage keys, packed again when the hour turns.
#[derive(Default)]
pub(crate) struct Meter {
    keys: Option<UsageKeys>,
}

impl Meter {
    /// The keys of `tenant`'s and `component`'s counters at `now_ms`.
    pub(crate) fn keys(&mut self, tenant: &str, component: &str, now_ms: u64) -> &UsageKeys {
        let hour = usage::hour_of(now_ms);
        if self.keys.as_ref().is_none_or(|k| k.hour != hour) {
            self.keys = None;
        }
        self.keys
            .get_or_insert_with(|| UsageKeys::new(tenant, component, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_those_of_the_hour_and_month_asked_for() {
        let mut meter = Meter::default();
        // The last hour of November 2026, then the first of December.
        let november = 1_796_083_200_000 - 1;
        let december = november + 1;
        for (now, month) in [
            (november, "2026-11"),
            (december, "2026-12"),
            (november, "2026-11"),
        ] {
            let keys = meter.keys("acme", "shop", now);
            let hour = usage::hour_of(now);
            assert_eq!(
                keys.month_fuel,
                usage::month_key("acme", usage::FUEL, month)
            );
            assert_eq!(
                keys.month_invocations,
                usage::month_key("acme", usage::INVOCATIONS, month)
            );
            assert_eq!(
                keys.wall_us,
                usage::ledger_key("acme", hour, "shop", usage::WALL_US)
            );
            assert_eq!(
                keys.http_response_bytes,
                usage::ledger_key("acme", hour, "shop", usage::HTTP_RESPONSE_BYTES)
            );
        }
    }
}
