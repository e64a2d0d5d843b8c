//! Promises: completed from outside (once; again with the same data changes nothing), read by
//! the worker that created them, which is woken when one it awaits completes.

use invicta_model::WorkerId;

use crate::error::{Error, Result};
use crate::records;
use crate::suspend::{self, PROMISE_BYTES_MAX, PromiseRecord};
use crate::{Executor, now_ms};

impl Executor {
    /// Completes the promise whose webhook is `token` with `data`, as
    /// [`Executor::complete_promise`] does; the worker and promise it completed.
    pub async fn complete_webhook(
        &self,
        token: &str,
        data: serde_json::Value,
    ) -> Result<(WorkerId, String, PromiseRecord)> {
        if !suspend::is_webhook_token(token) {
            return Err(Error::WebhookNotFound);
        }
        let key = suspend::webhook_key(token);
        let target = self
            .inner
            .store
            .read(move |tx| tx.get(&key))
            .await?
            .ok_or(Error::WebhookNotFound)?;
        let target: suspend::WebhookTarget = records::decode_json("webhook", &target)?;
        let id = WorkerId {
            tenant: invicta_model::TenantId::new(target.tenant)
                .map_err(|e| Error::Corrupt(e.to_string()))?,
            component: invicta_model::ComponentName::new(target.component)
                .map_err(|e| Error::Corrupt(e.to_string()))?,
            worker: invicta_model::WorkerName::new(target.worker)
                .map_err(|e| Error::Corrupt(e.to_string()))?,
        };
        let record = match self.complete_promise(&id, &target.promise, data).await {
            Err(Error::WorkerNotFound(_) | Error::PromiseNotFound(_)) => {
                return Err(Error::WebhookNotFound);
            }
            other => other?,
        };
        Ok((id, target.promise, record))
    }

    /// Completes the worker's promise `promise` with `data`, and wakes the worker if it awaits
    /// it. Completing it again with the same data changes nothing; with other data it is
    /// refused.
    pub async fn complete_promise(
        &self,
        id: &WorkerId,
        promise: &str,
        data: serde_json::Value,
    ) -> Result<PromiseRecord> {
        let size = data.to_string().len();
        if size > PROMISE_BYTES_MAX {
            return Err(Error::PromiseTooLarge {
                size,
                limit: PROMISE_BYTES_MAX,
            });
        }
        let (id_c, promise_c) = (id.clone(), promise.to_string());
        let record = self
            .inner
            .store
            .transact(move |tx| {
                if tx.get(&records::worker_key(&id_c))?.is_none() {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                }
                let key = suspend::promise_key(&id_c, &promise_c);
                let mut record: PromiseRecord = match tx.get(&key)? {
                    Some(bytes) => records::decode_json("promise", &bytes)?,
                    None => return Err(Error::PromiseNotFound(promise_c.clone())),
                };
                match &record.completed {
                    Some(existing) if *existing == data => return Ok(record),
                    Some(_) => return Err(Error::PromiseCompleted(promise_c.clone())),
                    None => {}
                }
                record.completed = Some(data.clone());
                record.completed_at_ms = Some(now_ms());
                tx.set(&key, &records::encode_json(&record))?;
                Ok(record)
            })
            .await?;
        self.wake(id).await?;
        Ok(record)
    }

    /// The worker's promise `promise`.
    pub async fn promise(&self, id: &WorkerId, promise: &str) -> Result<PromiseRecord> {
        let (id_c, promise_c) = (id.clone(), promise.to_string());
        self.inner
            .store
            .read(move |tx| {
                if tx.get(&records::worker_key(&id_c))?.is_none() {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                }
                match tx.get(&suspend::promise_key(&id_c, &promise_c))? {
                    Some(bytes) => records::decode_json("promise", &bytes),
                    None => Err(Error::PromiseNotFound(promise_c.clone())),
                }
            })
            .await
    }

    /// Up to `limit` of the worker's promises in id order, after `after` if given.
    pub async fn promises(
        &self,
        id: &WorkerId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, PromiseRecord)>> {
        let (id_c, after) = (id.clone(), after.map(str::to_string));
        self.inner
            .store
            .read(move |tx| {
                let after = after.as_deref().map(|a| suspend::promise_key(&id_c, a));
                let rows =
                    records::page(tx, &id_c, &suspend::promises_prefix(&id_c), after, limit)?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let Ok((_, _, _, _, promise)) =
                        invicta_store::keys::unpack::<(String, String, String, String, String)>(
                            &row.key,
                        )
                    else {
                        continue;
                    };
                    out.push((promise, records::decode_json("promise", &row.value)?));
                }
                Ok(out)
            })
            .await
    }
}
