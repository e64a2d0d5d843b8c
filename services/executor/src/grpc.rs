//! The executor's gRPC service (`proto/executor.proto`): how other processes — the gateway,
//! tests — reach the workers of the shards this executor owns. Each call goes to the same
//! [`Executor`] methods an in-process caller uses; errors travel as a `Problem` with the
//! error's stable code.

use std::collections::HashMap;

use invicta_model::{ComponentName, TenantId, WorkerId, WorkerName};
use invicta_proto::common;
use invicta_proto::executor::{
    self as pb, executor_server::Executor as ExecutorRpc, invoke_response::Outcome,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::Error;
use crate::wire::limits_from;
use crate::{Executor, WorkerStatus};

/// The largest gRPC message either way (40 MiB): an HTTP handler's request or response body
/// (16 MiB at most each) with its headers, or an invocation's parameters or result.
pub const MESSAGE_BYTES_MAX: usize = 40 * 1024 * 1024;

/// The gRPC face of an [`Executor`].
pub struct ExecutorService {
    executor: Executor,
}

impl ExecutorService {
    /// The worker a request names, if this executor runs it; else the refusal.
    fn owned(&self, worker: Option<common::WorkerId>) -> Result<WorkerId, Status> {
        let id = worker_id(worker)?;
        match not_here(&self.executor, &id) {
            Some(e) => Err(crate::problem::to_status(&e)),
            None => Ok(id),
        }
    }

    /// The worker's status now, as the reply to a call about it.
    async fn status_reply(&self, id: &WorkerId) -> Result<Response<pb::WorkerStatus>, Status> {
        let status = self
            .executor
            .status(id)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        Ok(Response::new(status_message(id, status)))
    }

    pub fn new(executor: Executor) -> pb::executor_server::ExecutorServer<ExecutorService> {
        pb::executor_server::ExecutorServer::new(ExecutorService { executor })
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }
}

fn worker_id(worker: Option<common::WorkerId>) -> Result<WorkerId, Status> {
    let w = worker.ok_or_else(|| Status::invalid_argument("`worker` is required"))?;
    let bad = |e: invicta_model::ids::InvalidName| Status::invalid_argument(e.to_string());
    Ok(WorkerId {
        tenant: TenantId::new(w.tenant).map_err(bad)?,
        component: ComponentName::new(w.component).map_err(bad)?,
        worker: WorkerName::new(w.worker).map_err(bad)?,
    })
}

/// A call for a worker this executor does not run is refused, not passed on: the caller asks
/// the scheduler again (two executors with stale views would otherwise pass it back and forth).
fn not_here(executor: &Executor, id: &WorkerId) -> Option<Error> {
    (!executor.owns(id)).then(|| Error::NotOwner {
        worker: id.to_string(),
        shard: invicta_model::shards::shard_of(id),
    })
}

fn status_message(id: &WorkerId, s: WorkerStatus) -> pb::WorkerStatus {
    pb::WorkerStatus {
        worker: Some(common::WorkerId {
            tenant: id.tenant.to_string(),
            component: id.component.to_string(),
            worker: id.worker.to_string(),
        }),
        status: s.status,
        component_version: s.component_version,
        oplog_length: s.oplog_length,
        pending_invocations: s.pending_invocations,
        interrupted: false,
        error: s.error,
        archived_entries: s.archived_entries,
    }
}

impl ExecutorService {
    async fn invoke_in(
        &self,
        r: pb::InvokeRequest,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let id = worker_id(r.worker)?;
        if let Some(e) = not_here(&self.executor, &id) {
            return Ok(Response::new(pb::InvokeResponse {
                outcome: Some(Outcome::Problem(crate::problem::to_problem(&e))),
                fuel_consumed: 0,
            }));
        }
        let params: Vec<serde_json::Value> = serde_json::from_str(&r.params_json).map_err(|e| {
            Status::invalid_argument(format!("params_json is not a JSON array: {e}"))
        })?;
        let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key);
        let limits = limits_from(r.limits);
        let response = match self
            .executor
            .invoke(&id, &r.function, &params, key, &limits)
            .await
        {
            Ok(done) => pb::InvokeResponse {
                outcome: Some(Outcome::ResultJson(done.result.to_string())),
                fuel_consumed: done.fuel_consumed,
            },
            Err(e) => pb::InvokeResponse {
                outcome: Some(Outcome::Problem(crate::problem::to_problem(&e))),
                fuel_consumed: 0,
            },
        };
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl ExecutorRpc for ExecutorService {
    async fn create_worker(
        &self,
        request: Request<pb::CreateWorkerRequest>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        let r = request.into_inner();
        let id = self.owned(r.worker)?;
        let mut env: Vec<(String, String)> = r
            .env
            .into_iter()
            .collect::<HashMap<_, _>>()
            .into_iter()
            .collect();
        env.sort();
        let limits = limits_from(r.limits);
        self.executor
            .create_worker(&id, env, r.args, r.version, &limits)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        self.status_reply(&id).await
    }

    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        // The caller's trace goes on here: the invocation's spans are children of this one.
        let span = tracing::info_span!("executor invoke");
        invicta_telemetry::propagation::adopt(&span, request.metadata());
        self.invoke_in(request.into_inner()).instrument(span).await
    }

    async fn get_worker(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        let id = self.owned(request.into_inner().worker)?;
        self.status_reply(&id).await
    }

    async fn read_files(
        &self,
        request: Request<pb::ReadFilesRequest>,
    ) -> Result<Response<pb::ReadFilesResponse>, Status> {
        let r = request.into_inner();
        let id = self.owned(r.worker)?;
        let view = self
            .executor
            .files(&id, &r.path)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        Ok(Response::new(crate::wire::files_to(view)))
    }

    async fn read_oplog(
        &self,
        request: Request<pb::ReadOplogRequest>,
    ) -> Result<Response<pb::ReadOplogResponse>, Status> {
        let r = request.into_inner();
        let id = worker_id(r.worker)?;
        let count = usize::try_from(r.count.clamp(1, 1_000)).unwrap_or(1_000);
        let entries = self
            .executor
            .oplog(&id, r.from.max(1), count)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        Ok(Response::new(pb::ReadOplogResponse {
            entries_json: entries
                .iter()
                .map(|(i, e)| e.to_json(*i).to_string())
                .collect(),
        }))
    }

    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let span = tracing::info_span!("executor enqueue");
        invicta_telemetry::propagation::adopt(&span, request.metadata());
        let r = request.into_inner();
        let id = worker_id(r.worker)?;
        if let Some(e) = not_here(&self.executor, &id) {
            return Ok(Response::new(pb::EnqueueResponse {
                outcome: Some(pb::enqueue_response::Outcome::Problem(
                    crate::problem::to_problem(&e),
                )),
                fresh: false,
            }));
        }
        let params: Vec<serde_json::Value> = serde_json::from_str(&r.params_json).map_err(|e| {
            Status::invalid_argument(format!("params_json is not a JSON array: {e}"))
        })?;
        let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key);
        let limits = limits_from(r.limits);
        let accepted = self
            .executor
            .enqueue(&id, &r.function, &params, key, r.schedule_at_ms, &limits)
            .instrument(span)
            .await;
        Ok(Response::new(match accepted {
            Ok((key, fresh)) => pb::EnqueueResponse {
                outcome: Some(pb::enqueue_response::Outcome::IdempotencyKey(key)),
                fresh,
            },
            Err(e) => pb::EnqueueResponse {
                outcome: Some(pb::enqueue_response::Outcome::Problem(
                    crate::problem::to_problem(&e),
                )),
                fresh: false,
            },
        }))
    }

    async fn wake(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        let id = self.owned(request.into_inner().worker)?;
        self.executor
            .wake(&id)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        self.status_reply(&id).await
    }

    async fn resume(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        let id = self.owned(request.into_inner().worker)?;
        let status = self
            .executor
            .resume(&id)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        Ok(Response::new(status_message(&id, status)))
    }

    async fn delete_worker(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        let id = self.owned(request.into_inner().worker)?;
        self.executor
            .delete_worker(&id)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        Ok(Response::new(pb::WorkerStatus {
            status: "deleted".into(),
            ..Default::default()
        }))
    }

    async fn set_version(
        &self,
        request: Request<pb::SetVersionRequest>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        let r = request.into_inner();
        let id = self.owned(r.worker)?;
        let method = crate::lifecycle::UpdateMethod::parse(&r.method).ok_or_else(|| {
            Status::invalid_argument(format!("unknown update method `{}`", r.method))
        })?;
        self.executor
            .set_version(&id, r.version, method)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        self.status_reply(&id).await
    }

    async fn fork(
        &self,
        request: Request<pb::ForkRequest>,
    ) -> Result<Response<pb::ForkResponse>, Status> {
        let r = request.into_inner();
        let id = self.owned(r.worker)?;
        let source = worker_id(r.source)?;
        let limits = limits_from(r.limits);
        let (_, at) = self
            .executor
            .fork(&source, &id, (r.at > 0).then_some(r.at), &limits)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        Ok(Response::new(pb::ForkResponse { at }))
    }

    async fn serve_http(
        &self,
        request: Request<pb::ServeHttpRequest>,
    ) -> Result<Response<pb::ServeHttpResponse>, Status> {
        let r = request.into_inner();
        let bad = |e: invicta_model::ids::InvalidName| Status::invalid_argument(e.to_string());
        let tenant = TenantId::new(r.tenant).map_err(bad)?;
        let component = ComponentName::new(r.component).map_err(bad)?;
        let limits = limits_from(r.limits);
        let pairs = |fields: Vec<pb::HttpField>| -> Vec<(String, Vec<u8>)> {
            fields.into_iter().map(|f| (f.name, f.value)).collect()
        };
        let handled = crate::types::HandlerRequest {
            method: r.method,
            scheme: r.scheme,
            authority: r.authority,
            path_and_query: r.path_and_query,
            headers: pairs(r.headers),
            body: r.body.into(),
        };
        // Here, whatever shards this executor holds: nothing of it is a worker's.
        let answer = match self
            .executor
            .serve_here(
                &tenant,
                &component,
                handled,
                crate::types::RequestBody::Whole(Default::default()),
                &limits,
            )
            .await
        {
            Ok(head) => crate::serve::collect(head).await,
            Err(e) => Err(e),
        };
        let outcome = match answer {
            Ok(answer) => {
                let fields = |pairs: Vec<(String, Vec<u8>)>| -> Vec<pb::HttpField> {
                    pairs
                        .into_iter()
                        .map(|(name, value)| pb::HttpField { name, value })
                        .collect()
                };
                pb::serve_http_response::Outcome::Answer(pb::HttpAnswer {
                    status: u32::from(answer.status),
                    headers: fields(answer.headers),
                    body: answer.body.to_vec(),
                    trailers: fields(answer.trailers),
                    fuel_consumed: answer.fuel_consumed,
                })
            }
            Err(e) => pb::serve_http_response::Outcome::Problem(crate::problem::to_problem(&e)),
        };
        Ok(Response::new(pb::ServeHttpResponse {
            outcome: Some(outcome),
        }))
    }

    async fn revert(
        &self,
        request: Request<pb::RevertRequest>,
    ) -> Result<Response<pb::RevertResponse>, Status> {
        let r = request.into_inner();
        let id = self.owned(r.worker)?;
        let (from, to) = self
            .executor
            .revert(&id, crate::RevertTo::Index(r.to))
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        Ok(Response::new(pb::RevertResponse { from, to }))
    }

    async fn interrupt(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        let id = self.owned(request.into_inner().worker)?;
        self.executor
            .interrupt(&id)
            .await
            .map_err(|e| crate::problem::to_status(&e))?;
        self.status_reply(&id).await
    }
}
