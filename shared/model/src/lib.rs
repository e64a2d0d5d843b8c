//! Invicta's domain model, shared by every service and free of IO: the ids that name tenants,
//! components and workers ([`ids`]), the values that cross a worker's boundary ([`Value`]), and
//! the oplog ([`oplog`]): its entries and their compact, versioned binary encoding.

pub mod ids;
pub mod oplog;
mod value;

pub use ids::{ComponentName, TenantId, WorkerId, WorkerName};
pub use value::Value;

/// The calendar month (UTC) of a moment in milliseconds since the epoch, as `YYYY-MM`: the
/// period of monthly usage and quotas.
pub fn month_of(unix_ms: u64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm): a date library for one line is not worth it.
    let days = i64::try_from(unix_ms / 86_400_000).unwrap_or(0);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn months_are_civil() {
        assert_eq!(super::month_of(0), "1970-01");
        // 2026-11-24T07:40:00Z
        assert_eq!(super::month_of(1_795_506_000_000), "2026-11");
        // 2024-02-29T12:00:00Z and 2024-03-01T00:00:00Z
        assert_eq!(super::month_of(1_709_208_000_000), "2024-02");
        assert_eq!(super::month_of(1_709_251_200_000), "2024-03");
    }
}
