//! The executor's configuration (`[executor]`).

use serde::{Deserialize, Serialize};

use crate::http::HttpConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Fuel one invocation may consume (default 1,000,000,000, about a second of guest code);
    /// past it the invocation fails with `out_of_fuel` and leaves no trace in the worker's state.
    pub fuel_per_invocation: u64,
    /// Wall-clock limit of one invocation, in milliseconds (default 30,000).
    pub invocation_timeout_ms: u64,
    /// A worker idle this long is suspended: its instance is dropped and rebuilt by replay on
    /// its next invocation (default 60,000 ms).
    pub idle_suspend_ms: u64,
    /// An invocation still running after this long makes its start durable, so that a crash
    /// from then on resumes it rather than forgets it (default 5 ms). Shorter invocations
    /// commit their start with their completion, in one transaction.
    pub start_commit_delay_ms: u64,
    /// While commits come one at a time (the last group was one request), the committer polls
    /// for the next request for this long (microseconds; default 500, at most 10,000; 0: never)
    /// before it sleeps, and one submitter at a time polls for its commit on its own thread
    /// rather than being woken when it is durable. Waking a sleeping thread on an idle CPU is
    /// slow on a virtual machine: the two took ~130 µs off a sequential call here (~390 → ~260
    /// µs). Once commits serve several requests each, nobody polls, which lets the next group
    /// gather (polling then made groups smaller and cost more CPU a call).
    pub commit_poll_us: u64,
    /// Invocations one worker may have waiting (default 1,024); more are refused with
    /// `queue_full`.
    pub queue_depth: usize,
    /// A worker that waits longer than this (on a `wasi:clocks` deadline, in milliseconds;
    /// default 1,000) is suspended until the deadline: its instance is dropped, and replay
    /// rebuilds it when the time comes. A worker awaiting a promise is always suspended.
    pub suspend_wait_ms: u64,
    /// Who decides which shards of workers this executor runs: `all` (the default, for a
    /// single executor: it takes every shard when it starts) or `scheduler` (the worker
    /// scheduler grants them).
    pub placement: Placement,
    /// How long a shard lease lasts unless renewed (default 10,000 ms); a dead executor's
    /// workers move after it.
    pub lease_ms: u64,
    /// Outgoing HTTP: timeouts, response size, private hosts allowed.
    pub http: HttpConfig,
    /// The file of the key that seals configuration secrets (64 hex digits; made there on
    /// first start). `INVICTA_SECRETS_KEY` overrides it. Every process of a deployment needs
    /// the same key. The server sets `<data_dir>/secrets.key` when unset; without either, an
    /// executor makes a key of its own that dies with it.
    pub secrets_key_file: Option<std::path::PathBuf>,
    /// A worker whose component exports `invicta:host/snapshot` is snapshotted after this many
    /// invocations since its last snapshot (default 1,000; 0: not by count).
    pub snapshot_every_invocations: u64,
    /// … or after this many oplog entries since it (default 20,000; 0: not by that count) …
    pub snapshot_every_entries: u64,
    /// … or after this many bytes of oplog since it (encoded entries; default 8 MiB; 0: not by
    /// size), whichever comes first.
    pub snapshot_every_oplog_bytes: u64,
    /// Where the files of the workers running here live: a directory per executor (named by
    /// its id, locked while it lives, removed by the next executor to start if it crashed) and
    /// in it one per worker, made afresh from its version's files when it is rebuilt. Executors
    /// may share it. The server sets `<data_dir>/worker-files` when unset; without either,
    /// `invicta-worker-files` under the system's temporary directory.
    pub worker_files_dir: Option<std::path::PathBuf>,
    /// The most bytes of files one worker may hold, whatever its plan says (default 1 GiB).
    pub worker_files_bytes_max: u64,
}

/// Who decides which shards an executor runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The executor takes every shard: one executor per store.
    #[default]
    All,
    /// The worker scheduler grants shards.
    Scheduler,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fuel_per_invocation: 1_000_000_000,
            invocation_timeout_ms: 30_000,
            idle_suspend_ms: 60_000,
            start_commit_delay_ms: 5,
            commit_poll_us: 500,
            queue_depth: 1_024,
            suspend_wait_ms: 1_000,
            placement: Placement::All,
            lease_ms: 10_000,
            http: HttpConfig::default(),
            secrets_key_file: None,
            snapshot_every_invocations: 1_000,
            snapshot_every_entries: 20_000,
            snapshot_every_oplog_bytes: 8 * 1024 * 1024,
            worker_files_dir: None,
            worker_files_bytes_max: 1024 * 1024 * 1024,
        }
    }
}
