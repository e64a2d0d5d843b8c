//! Where the CPU went during a load: the server's threads by name, and the machine's idle time,
//! from `/proc`. A throughput moves by ±10% between runs here; the CPU time each call costs
//! moves far less, which makes it the figure to compare builds by.

use std::collections::BTreeMap;
use std::time::Duration;

/// CPU time of a process's threads, summed by thread name, and the machine's idle time.
pub(crate) struct Snapshot {
    threads: BTreeMap<String, u64>,
    idle: u64,
    total: u64,
}

impl Snapshot {
    /// The threads of process `pid` now; `None` where `/proc` cannot be read (not Linux).
    pub(crate) fn take(pid: u32) -> Option<Snapshot> {
        let mut threads = BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
                continue; // the thread ended meanwhile
            };
            if let Some((name, ticks)) = thread_ticks(&stat) {
                *threads.entry(group(name)).or_insert(0) += ticks;
            }
        }
        let (idle, total) = machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
        Some(Snapshot {
            threads,
            idle,
            total,
        })
    }

    /// What was spent since `before`, per call of `calls`.
    pub(crate) fn since(&self, before: &Snapshot, calls: usize) -> Spent {
        let tick = Duration::from_secs(1) / ticks_per_second();
        let per_call =
            |ticks: u64| tick * u32::try_from(ticks).unwrap_or(u32::MAX) / calls.max(1) as u32;
        let threads = self
            .threads
            .iter()
            .map(|(name, ticks)| {
                let spent = ticks.saturating_sub(before.threads.get(name).copied().unwrap_or(0));
                (name.clone(), per_call(spent))
            })
            .filter(|(_, spent)| !spent.is_zero())
            .collect::<Vec<_>>();
        let total = self.total.saturating_sub(before.total).max(1);
        Spent {
            per_call: threads.iter().map(|(_, d)| *d).sum(),
            threads,
            idle: self.idle.saturating_sub(before.idle) as f64 / total as f64,
        }
    }
}

/// The server's CPU per call, by thread, and the share of the machine left idle.
pub(crate) struct Spent {
    pub per_call: Duration,
    pub threads: Vec<(String, Duration)>,
    pub idle: f64,
}

impl Spent {
    pub(crate) fn describe(&self, what: &str) -> String {
        let mut threads = self.threads.clone();
        threads.sort_by_key(|(_, spent)| std::cmp::Reverse(*spent));
        let parts = threads
            .iter()
            .map(|(name, d)| format!("{name} {:.1}", d.as_secs_f64() * 1e6))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{what}: the server's CPU {:.1} µs a call ({parts}), the machine {:.0}% idle",
            self.per_call.as_secs_f64() * 1e6,
            self.idle * 100.0
        )
    }
}

/// Threads of a pool share a name (`tokio-rt-worker`); numbered ones (`argon2-0`) are summed
/// under their stem.
fn group(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((stem, n)) if n.bytes().all(|b| b.is_ascii_digit()) => stem.to_string(),
        _ => name.to_string(),
    }
}

/// A thread's name and its user + system time in clock ticks, from its `stat` line.
fn thread_ticks(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    // After the name: state (field 3), …, utime (14), stime (15).
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// The machine's idle ticks (idle + iowait) and all its ticks, from `/proc/stat`'s `cpu` line.
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((idle, ticks.iter().sum()))
}

/// `/proc` counts CPU time in USER_HZ, which Linux fixes at 100 for user space on every
/// architecture (whatever the kernel's own tick rate).
fn ticks_per_second() -> u32 {
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_thread_stat_line_with_spaces_in_the_name() {
        let stat = "1234 (tokio rt) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 1 0";
        assert_eq!(thread_ticks(stat), Some(("tokio rt", 290)));
    }

    #[test]
    fn groups_numbered_threads() {
        assert_eq!(group("argon2-1"), "argon2");
        assert_eq!(group("tokio-rt-worker"), "tokio-rt-worker");
        assert_eq!(group("oplog-committer"), "oplog-committer");
    }

    #[test]
    fn reads_the_machine_line() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(machine_ticks(stat), Some((850, 1000)));
    }
}
