//! Uploads answered early: with `Prefer: respond-async`, an upload is answered 202 once its
//! bytes are in, and checked and compiled in the background; `GET /v1/components/{c}/uploads/{id}` says how
//! it goes (`compiling`, then `ready` with the version, or `failed` with the problem). Jobs are
//! kept in memory, the last [`JOBS_MAX`] of them: a server that restarts meanwhile forgets the
//! job (404), and the client uploads again (the same bytes are not compiled twice once stored).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Value, json};

/// Upload jobs remembered.
pub const JOBS_MAX: usize = 1_000;

/// Uploads of one tenant compiling at once in the background: each holds its bytes until its
/// compile is done, so a client that does not wait cannot pile them up.
pub const COMPILING_PER_TENANT_MAX: usize = 2;

/// How an upload goes.
#[derive(Debug, Clone)]
pub(crate) enum Progress {
    Compiling,
    /// The version, and whether it is new (201) or these bytes were already one (200).
    Ready {
        version: Value,
        created: bool,
    },
    Failed {
        problem: Value,
    },
}

struct Job {
    tenant: String,
    component: String,
    started: Instant,
    progress: Progress,
}

#[derive(Default)]
pub(crate) struct Uploads {
    jobs: Mutex<(HashMap<String, Job>, VecDeque<String>)>,
}

impl Uploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Job>, VecDeque<String>)> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new job, compiling; its id. `None` when the tenant has as many compiling as it may.
    pub(crate) fn start(&self, tenant: &str, component: &str) -> Option<String> {
        let bytes: [u8; 12] = rand::random();
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut jobs = self.lock();
        let compiling = jobs
            .0
            .values()
            .filter(|j| j.tenant == tenant && matches!(j.progress, Progress::Compiling))
            .count();
        if compiling >= COMPILING_PER_TENANT_MAX {
            return None;
        }
        jobs.0.insert(
            id.clone(),
            Job {
                tenant: tenant.to_string(),
                component: component.to_string(),
                started: Instant::now(),
                progress: Progress::Compiling,
            },
        );
        jobs.1.push_back(id.clone());
        while jobs.1.len() > JOBS_MAX {
            if let Some(old) = jobs.1.pop_front() {
                jobs.0.remove(&old);
            }
        }
        Some(id)
    }

    pub(crate) fn finish(&self, id: &str, progress: Progress) {
        if let Some(job) = self.lock().0.get_mut(id) {
            job.progress = progress;
        }
    }

    /// The job as the API shows it, if it is this tenant's and component's.
    pub(crate) fn show(&self, tenant: &str, component: &str, id: &str) -> Option<Value> {
        let jobs = self.lock();
        let job = jobs.0.get(id)?;
        if job.tenant != tenant || job.component != component {
            return None;
        }
        let elapsed_ms = u64::try_from(job.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(match &job.progress {
            Progress::Compiling => {
                json!({ "upload": id, "status": "compiling", "elapsed_ms": elapsed_ms })
            }
            Progress::Ready { version, created } => json!({
                "upload": id, "status": "ready", "elapsed_ms": elapsed_ms,
                "created": created, "version": version,
            }),
            Progress::Failed { problem } => json!({
                "upload": id, "status": "failed", "elapsed_ms": elapsed_ms, "problem": problem,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_seen_only_by_their_tenant_and_forgotten_past_the_limit() {
        let uploads = Uploads::default();
        let id = uploads.start("t", "c").expect("a first job");
        let second = uploads.start("t", "c").expect("a second job");
        assert!(
            uploads.start("t", "c").is_none(),
            "a third while two compile"
        );
        assert!(uploads.start("u", "c").is_some(), "another tenant's");
        assert_eq!(
            uploads.show("t", "c", &id).map(|v| v["status"].clone()),
            Some(json!("compiling"))
        );
        assert!(uploads.show("other", "c", &id).is_none());
        uploads.finish(
            &id,
            Progress::Failed {
                problem: json!({ "code": "invalid_component" }),
            },
        );
        assert_eq!(
            uploads.show("t", "c", &id).map(|v| v["status"].clone()),
            Some(json!("failed"))
        );
        uploads.finish(
            &second,
            Progress::Ready {
                version: json!({}),
                created: true,
            },
        );
        for _ in 0..JOBS_MAX {
            let id = uploads.start("t", "c").expect("room, the others done");
            uploads.finish(&id, Progress::Failed { problem: json!({}) });
        }
        assert!(
            uploads.show("t", "c", &id).is_none(),
            "the oldest is forgotten"
        );
    }
}
