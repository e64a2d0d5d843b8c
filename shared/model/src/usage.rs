//! Usage: where the store keeps it, and the calendar it is counted in. The executor and the
//! registry add to these counters in the transactions that do the work they measure; billing
//! reads them. One module owns the layout so that writers and readers cannot drift apart.
//!
//! - `("tenant-usage", tenant, kind)`: what a tenant has now: `workers`, `components`,
//!   `component_bytes`.
//! - `("usage", tenant, kind, "YYYY-MM")`: a month's totals that quotas check (`fuel`,
//!   `invocations`).
//! - `("ledger", tenant, hour, component, kind)`: the usage ledger, per hour (since the epoch)
//!   and component: `invocations`, `fuel`, `wall_us`, `memory_kib_ms`, `oplog_bytes`,
//!   `storage_byte_hours`.
//! - `("stored", tenant, component, kind)`: the bytes a component's tenant stores now:
//!   `component_bytes` (its versions' wasm) and `oplog_bytes` (its workers' oplogs). Billing
//!   samples them once an hour into the ledger's `storage_byte_hours`.
//! - `("storage-accrued", tenant)`: the first hour whose storage is not yet in the ledger,
//!   written in the transaction that accrues it, so no hour is billed twice.
//! - `("route-ledger", tenant, hour, route, kind)`: what each public route served, per hour:
//!   `requests`, `request_bytes`, `response_bytes`. The gateway adds to it (and to the fuel
//!   of the ephemeral handlers it served) in batches, at most a second apart.

use foundationdb_tuple::pack;

/// Kinds of the monthly totals and the ledger.
pub const FUEL: &str = "fuel";
pub const INVOCATIONS: &str = "invocations";
/// Wall-clock time of invocations, in microseconds.
pub const WALL_US: &str = "wall_us";
/// Memory-time: the worker's peak linear memory (KiB) during an invocation × its wall time (ms).
pub const MEMORY_KIB_MS: &str = "memory_kib_ms";
/// Oplog bytes an invocation appended (encoded entries).
pub const OPLOG_BYTES: &str = "oplog_bytes";
/// Bytes stored × hours: each hour is charged the bytes stored when it was first sampled.
pub const STORAGE_BYTE_HOURS: &str = "storage_byte_hours";
/// Outgoing HTTP requests sent (replays send none, so count none).
pub const HTTP_REQUESTS: &str = "http_requests";
/// Body bytes of outgoing HTTP requests sent.
pub const HTTP_REQUEST_BYTES: &str = "http_request_bytes";
/// Bytes of the responses to outgoing HTTP requests.
pub const HTTP_RESPONSE_BYTES: &str = "http_response_bytes";
/// The ledger's kinds, in report order.
pub const LEDGER_KINDS: [&str; 9] = [
    INVOCATIONS,
    FUEL,
    WALL_US,
    MEMORY_KIB_MS,
    OPLOG_BYTES,
    STORAGE_BYTE_HOURS,
    HTTP_REQUESTS,
    HTTP_REQUEST_BYTES,
    HTTP_RESPONSE_BYTES,
];

/// Kinds of what a tenant has.
pub const WORKERS: &str = "workers";
pub const COMPONENTS: &str = "components";
pub const COMPONENT_BYTES: &str = "component_bytes";

pub fn count_key(tenant: &str, kind: &str) -> Vec<u8> {
    pack(&("tenant-usage", tenant, kind))
}

/// The prefix of every tenant's counts.
pub fn counts_prefix() -> Vec<u8> {
    pack(&("tenant-usage",))
}

/// The kind a [`count_key`] counts.
pub fn count_kind(key: &[u8]) -> Option<String> {
    let (_, _, kind): (String, String, String) = foundationdb_tuple::unpack(key).ok()?;
    Some(kind)
}

/// The bytes of `kind` (`component_bytes`, `oplog_bytes`) a tenant's component stores now.
pub fn stored_key(tenant: &str, component: &str, kind: &str) -> Vec<u8> {
    pack(&("stored", tenant, component, kind))
}

/// The prefix of every tenant's stored bytes.
pub fn stored_prefix() -> Vec<u8> {
    pack(&("stored",))
}

/// The prefix of one tenant's stored bytes.
pub fn stored_prefix_of(tenant: &str) -> Vec<u8> {
    pack(&("stored", tenant))
}

/// The (tenant, component, kind) of a [`stored_key`].
pub fn parse_stored_key(key: &[u8]) -> Option<(String, String, String)> {
    let (_, tenant, component, kind): (String, String, String, String) =
        foundationdb_tuple::unpack(key).ok()?;
    Some((tenant, component, kind))
}

/// Where the hour up to which a tenant's storage is accrued is kept.
pub fn storage_accrued_key(tenant: &str) -> Vec<u8> {
    pack(&("storage-accrued", tenant))
}

pub fn month_key(tenant: &str, kind: &str, month: &str) -> Vec<u8> {
    pack(&("usage", tenant, kind, month))
}

pub fn ledger_key(tenant: &str, hour: u64, component: &str, kind: &str) -> Vec<u8> {
    pack(&("ledger", tenant, hour, component, kind))
}

/// Where a tenant's ledger starts at `hour`: `[ledger_from(t, a), ledger_from(t, b))` holds
/// hours `a` to `b - 1`.
pub fn ledger_from(tenant: &str, hour: u64) -> Vec<u8> {
    pack(&("ledger", tenant, hour))
}

/// The hour (since the epoch) of a moment in milliseconds.
/// What a public route served in an hour: `requests`, `request_bytes`, `response_bytes`.
pub fn route_ledger_key(tenant: &str, hour: u64, route: &str, kind: &str) -> Vec<u8> {
    pack(&("route-ledger", tenant, hour, route, kind))
}

/// Every hour of a tenant's route ledger from `hour` on.
pub fn route_ledger_from(tenant: &str, hour: u64) -> Vec<u8> {
    pack(&("route-ledger", tenant, hour))
}

/// A route ledger key's hour, route and kind.
pub fn parse_route_ledger_key(key: &[u8]) -> Option<(u64, String, String)> {
    let (_, _, hour, route, kind): (String, String, u64, String, String) =
        foundationdb_tuple::unpack(key).ok()?;
    Some((hour, route, kind))
}

pub const ROUTE_REQUESTS: &str = "requests";
pub const ROUTE_REQUEST_BYTES: &str = "request_bytes";
pub const ROUTE_RESPONSE_BYTES: &str = "response_bytes";

pub fn hour_of(unix_ms: u64) -> u64 {
    unix_ms / 3_600_000
}

/// The civil date (year, month, day) of a day since the epoch (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The years a civil date may have: four digits (and the first day after them, where a month
/// ends), so that nothing computed from one overflows.
pub const YEARS: std::ops::RangeInclusive<i64> = 0..=10_000;

/// The day since the epoch of a civil date; `None` for a date that does not exist, or whose
/// year is outside [`YEARS`].
pub fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !YEARS.contains(&year) || !(1..=12).contains(&month) || day == 0 || day > 31 {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // Reject 2026-02-30 and the like: the date must come back as it went in.
    (civil_from_days(days) == (year, month, day)).then_some(days)
}

/// The calendar month (UTC) of a moment in milliseconds since the epoch, as `YYYY-MM`: the
/// period of monthly usage and quotas.
pub fn month_of(unix_ms: u64) -> String {
    let (year, month, _) = civil_from_days(i64::try_from(unix_ms / 86_400_000).unwrap_or(0));
    format!("{year:04}-{month:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any year, month and day: a day or `None`, never a panic; a day comes back whole.
        #[test]
        fn any_date_is_a_day_or_none(year in proptest::prelude::any::<i64>(), month in 0_u32..20, day in 0_u32..40) {
            if let Some(days) = days_from_civil(year, month, day) {
                proptest::prop_assert_eq!(civil_from_days(days), (year, month, day));
            }
        }
    }

    #[test]
    fn months_are_civil() {
        assert_eq!(month_of(0), "1970-01");
        // 2026-11-24T07:40:00Z
        assert_eq!(month_of(1_795_506_000_000), "2026-11");
        // 2024-02-29T12:00:00Z and 2024-03-01T00:00:00Z
        assert_eq!(month_of(1_709_208_000_000), "2024-02");
        assert_eq!(month_of(1_709_251_200_000), "2024-03");
    }

    #[test]
    fn dates_round_trip() {
        for days in [-1_000_i64, 0, 1, 59, 60, 19_782, 20_781, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), Some(days), "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(2024, 2, 29), Some(19_782));
        assert_eq!(days_from_civil(2026, 2, 29), None);
        assert_eq!(days_from_civil(2026, 13, 1), None);
        assert_eq!(days_from_civil(5_000_000_000_000_000, 1, 1), None);
        assert_eq!(days_from_civil(i64::MAX, 12, 1), None);
        assert_eq!(days_from_civil(i64::MIN, 1, 1), None);
    }

    #[test]
    fn count_keys_say_their_kind() {
        let key = count_key("t", WORKERS);
        assert!(key.starts_with(&counts_prefix()));
        assert_eq!(count_kind(&key).as_deref(), Some(WORKERS));
    }

    #[test]
    fn stored_keys_round_trip() {
        let key = stored_key("t", "c", OPLOG_BYTES);
        assert!(key.starts_with(&stored_prefix_of("t")));
        assert!(key.starts_with(&stored_prefix()));
        assert!(!key.starts_with(&stored_prefix_of("t2")));
        assert_eq!(
            parse_stored_key(&key),
            Some(("t".into(), "c".into(), OPLOG_BYTES.into()))
        );
    }

    #[test]
    fn ledger_keys_sort_by_hour() {
        let a = ledger_key("t", 9, "zeta", FUEL);
        let b = ledger_key("t", 10, "alpha", FUEL);
        assert!(a < b);
        assert!(ledger_from("t", 9) <= a && a < ledger_from("t", 10));
    }
}
