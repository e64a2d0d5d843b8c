//! Conversions between the executor's types and the gRPC messages that its service and its
//! client share.

use invicta_proto::executor as pb;

use crate::limits::Limits;

/// The plan's limits a request carries (none given: the executor's own limits only).
pub fn limits_from(limits: Option<pb::Limits>) -> Limits {
    match limits {
        None => Limits::unlimited(),
        Some(l) => Limits {
            fuel_per_invocation: l.fuel_per_invocation,
            fuel_per_month: l.fuel_per_month,
            memory_per_worker_bytes: l.memory_per_worker_bytes,
            workers_max: l.workers_max,
            egress_hosts: l.egress_restricted.then_some(l.egress_hosts),
            concurrent_invocations: match l.concurrent_invocations {
                0 => u64::MAX,
                n => n,
            },
            // Checked where it was given; one that does not read here is no policy.
            retry: serde_json::from_str(&l.retry_json).ok(),
            archive_retention_days: l.archive_retention_days,
            files_per_worker_bytes: l.files_per_worker_bytes,
        },
    }
}

/// The wire form of [`Limits`].
pub fn limits_to(limits: &Limits) -> pb::Limits {
    pb::Limits {
        fuel_per_invocation: limits.fuel_per_invocation,
        fuel_per_month: limits.fuel_per_month,
        memory_per_worker_bytes: limits.memory_per_worker_bytes,
        workers_max: limits.workers_max,
        egress_hosts: limits.egress_hosts.clone().unwrap_or_default(),
        egress_restricted: limits.egress_hosts.is_some(),
        concurrent_invocations: match limits.concurrent_invocations {
            u64::MAX => 0,
            n => n,
        },
        retry_json: limits
            .retry
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
            .unwrap_or_default(),
        archive_retention_days: limits.archive_retention_days,
        files_per_worker_bytes: limits.files_per_worker_bytes,
    }
}

/// The wire form of what is at a path of a worker's files.
pub(crate) fn files_to(view: crate::files::FileView) -> pb::ReadFilesResponse {
    match view {
        crate::files::FileView::File(content) => pb::ReadFilesResponse {
            is_file: true,
            content,
            entries: Vec::new(),
        },
        crate::files::FileView::Directory(entries) => pb::ReadFilesResponse {
            is_file: false,
            content: Vec::new(),
            entries: entries
                .into_iter()
                .map(|e| pb::FileEntry {
                    name: e.name,
                    kind: e.kind,
                    size: e.size,
                    read_only: e.read_only,
                })
                .collect(),
        },
    }
}

/// [`files_to`]'s inverse.
pub(crate) fn files_from(reply: pb::ReadFilesResponse) -> crate::files::FileView {
    if reply.is_file {
        return crate::files::FileView::File(reply.content);
    }
    crate::files::FileView::Directory(
        reply
            .entries
            .into_iter()
            .map(|e| crate::files::FileEntry {
                name: e.name,
                kind: e.kind,
                size: e.size,
                read_only: e.read_only,
            })
            .collect(),
    )
}
