//! The executor's Prometheus metrics, defined in one place (names, help, buckets). The gateway
//! serves them at `/metrics` in the OpenMetrics text format.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How an invocation ended: `completed`, or the code of its failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub outcome: String,
}

pub(crate) struct Metrics {
    pub invocations: Family<OutcomeLabel, Counter>,
    /// From the invocation's start in its worker to its reply: durable latency, queueing aside.
    pub invocation_seconds: Histogram,
    pub fuel: Counter,
    pub commit_seconds: Histogram,
    pub commit_batch: Histogram,
    /// Activations that replayed an oplog (first use, resume, after a failure or a crash).
    pub replays: Counter,
    pub replayed_invocations: Counter,
    pub snapshots_taken: Counter,
    pub snapshot_recoveries: Counter,
    pub snapshot_fallbacks: Counter,
    pub archived_entries: Counter,
    pub suspensions: Counter,
    pub active_workers: Gauge,
    pub suspended_workers: Gauge,
    pub tail_records: Gauge,
    registry: Mutex<Registry>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let metrics = Metrics {
            invocations: Family::default(),
            // 50 µs to ~1.6 s.
            invocation_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            fuel: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            replays: Counter::default(),
            replayed_invocations: Counter::default(),
            snapshots_taken: Counter::default(),
            snapshot_recoveries: Counter::default(),
            snapshot_fallbacks: Counter::default(),
            archived_entries: Counter::default(),
            suspensions: Counter::default(),
            active_workers: Gauge::default(),
            suspended_workers: Gauge::default(),
            tail_records: Gauge::default(),
            registry: Mutex::new(Registry::with_prefix("invicta")),
        };
        {
            let mut r = metrics.lock();
            r.register(
                "invocations",
                "Invocations run, by outcome",
                metrics.invocations.clone(),
            );
            r.register(
                "invocation_seconds",
                "Time from an invocation's start in its worker to its durable reply",
                metrics.invocation_seconds.clone(),
            );
            r.register(
                "fuel",
                "Fuel consumed by completed invocations",
                metrics.fuel.clone(),
            );
            r.register(
                "commit_seconds",
                "Duration of a group commit transaction",
                metrics.commit_seconds.clone(),
            );
            r.register(
                "commit_batch_requests",
                "Requests committed together in one group commit",
                metrics.commit_batch.clone(),
            );
            r.register(
                "replays",
                "Worker activations that replayed an oplog",
                metrics.replays.clone(),
            );
            r.register(
                "replayed_invocations",
                "Invocations re-run by replay",
                metrics.replayed_invocations.clone(),
            );
            r.register(
                "snapshots_taken",
                "Worker snapshots saved to the blob store",
                metrics.snapshots_taken.clone(),
            );
            r.register(
                "snapshot_recoveries",
                "Worker activations that started from a snapshot",
                metrics.snapshot_recoveries.clone(),
            );
            r.register(
                "snapshot_fallbacks",
                "Snapshots that could not be used, passed over for an earlier one or a full replay",
                metrics.snapshot_fallbacks.clone(),
            );
            r.register(
                "archived_entries",
                "Oplog entries moved from the store to archived segments",
                metrics.archived_entries.clone(),
            );
            r.register(
                "suspensions",
                "Workers suspended",
                metrics.suspensions.clone(),
            );
            r.register(
                "active_workers",
                "Workers with an instance in memory",
                metrics.active_workers.clone(),
            );
            r.register(
                "suspended_workers",
                "Workers without an instance in memory (all tenants', on this store)",
                metrics.suspended_workers.clone(),
            );
            r.register(
                "oplog_tail_records",
                "Records of appended entries in the oplog's tail, not yet cleared",
                metrics.tail_records.clone(),
            );
        }
        metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn outcome(&self, outcome: &str) {
        self.invocations
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.lock()).is_err() {
            tracing::warn!("encode metrics");
        }
        out
    }
}
