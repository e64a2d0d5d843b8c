//! The executor as the Invicta host interface sees it: calls a worker makes to other workers,
//! and the promises it creates and reads. Holds the executor weakly, as workers' stores hold it.

use invicta_model::WorkerId;

use crate::error::Error;
use crate::records;
use crate::suspend::{self, PromiseRecord};
use crate::{Executor, Inner, hostapi, now_ms};
/// The executor behind a worker's host interface.
pub(crate) struct ExecutorWorkers(pub(crate) std::sync::Weak<Inner>);

impl ExecutorWorkers {
    fn executor(&self) -> std::result::Result<Executor, String> {
        self.0
            .upgrade()
            .map(|inner| Executor { inner })
            .ok_or_else(|| "the executor is stopping".to_string())
    }
}

impl hostapi::Workers for ExecutorWorkers {
    fn invoke(
        &self,
        call: hostapi::Call,
        function: String,
    ) -> futures::future::BoxFuture<'static, std::result::Result<String, String>> {
        let executor = self.executor();
        Box::pin(async move {
            executor?
                .invoke(
                    &call.target,
                    &function,
                    &call.params,
                    Some(call.key),
                    &call.limits,
                )
                .await
                .map(|completed| completed.result.to_string())
                .map_err(|e| e.to_string())
        })
    }

    fn enqueue(
        &self,
        call: hostapi::Call,
        function: String,
        at: Option<u64>,
    ) -> futures::future::BoxFuture<'static, std::result::Result<String, String>> {
        let executor = self.executor();
        Box::pin(async move {
            executor?
                .enqueue(
                    &call.target,
                    &function,
                    &call.params,
                    Some(call.key),
                    at,
                    &call.limits,
                )
                .await
                .map(|(key, _)| key)
                .map_err(|e| e.to_string())
        })
    }

    fn create_promise(
        &self,
        worker: WorkerId,
        id: String,
    ) -> futures::future::BoxFuture<'static, std::result::Result<(), String>> {
        let executor = self.executor();
        Box::pin(async move {
            let key = suspend::promise_key(&worker, &id);
            // Made once, outside the transaction (whose body may run more than once).
            let token = suspend::new_webhook_token();
            let record = records::encode_json(&PromiseRecord {
                created_at_ms: now_ms(),
                completed: None,
                completed_at_ms: None,
                webhook: Some(token.clone()),
            });
            let target = records::encode_json(&suspend::WebhookTarget {
                tenant: worker.tenant.to_string(),
                component: worker.component.to_string(),
                worker: worker.worker.to_string(),
                promise: id.clone(),
            });
            executor?
                .inner
                .store
                .transact(move |tx| {
                    if tx.get(&key)?.is_none() {
                        tx.set(&key, &record)?;
                        tx.set(&suspend::webhook_key(&token), &target)?;
                    }
                    Ok::<_, Error>(())
                })
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn config(
        &self,
        worker: WorkerId,
    ) -> futures::future::BoxFuture<
        'static,
        std::result::Result<Vec<(String, crate::settings::Seen)>, String>,
    > {
        let executor = self.executor();
        Box::pin(async move {
            let executor = executor?;
            crate::settings::seen(&executor.inner.store, &executor.inner.secrets, &worker)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn reveal(
        &self,
        worker: WorkerId,
        key: String,
    ) -> futures::future::BoxFuture<'static, std::result::Result<Option<(String, String)>, String>>
    {
        let executor = self.executor();
        Box::pin(async move {
            let executor = executor?;
            let secrets = &executor.inner.secrets;
            let value = crate::settings::reveal(&executor.inner.store, secrets, &worker, &key)
                .await
                .map_err(|e| e.to_string())?;
            Ok(value.map(|v| (secrets.digest(&v), v)))
        })
    }

    fn read_promise(
        &self,
        worker: WorkerId,
        id: String,
    ) -> futures::future::BoxFuture<'static, std::result::Result<Option<PromiseRecord>, String>>
    {
        let executor = self.executor();
        Box::pin(async move {
            let key = suspend::promise_key(&worker, &id);
            let bytes = executor?
                .inner
                .store
                .read(move |tx| tx.get(&key))
                .await
                .map_err(|e| e.to_string())?;
            bytes
                .map(|b| records::decode_json::<PromiseRecord>("promise", &b))
                .transpose()
                .map_err(|e| e.to_string())
        })
    }
}
