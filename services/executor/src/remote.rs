//! Routing to the executor that owns a worker, for a process that runs the gateway without the
//! worker's shard: the scheduler says where the worker runs, and the call goes there over gRPC.
//! A call that finds the worker moved (its executor died or lost the lease) asks again and
//! retries on the new owner; every forwarded invocation carries an idempotency key, so a retry
//! never runs it twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use invicta_model::WorkerId;
use invicta_model::shards::shard_of;
use invicta_proto::common;
use invicta_proto::executor::{self as pb, executor_client::ExecutorClient, invoke_response};
use invicta_worker_scheduler::grpc::SchedulerClient;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::support::lock;
use crate::types::Completed;

/// How long a call keeps looking for the worker's executor (a failover takes about a lease).
const ROUTE_BUDGET: Duration = Duration::from_secs(30);

/// What [`Router::control`] asks of a worker's executor.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    Resume,
    Delete,
    SetVersion(u64, crate::lifecycle::UpdateMethod),
}

pub(crate) struct Router {
    scheduler: SchedulerClient,
    /// Where each shard's worker ran last, until a call finds it moved.
    placements: Mutex<HashMap<u32, String>>,
    clients: Mutex<HashMap<String, ExecutorClient<Channel>>>,
}

fn wire(id: &WorkerId) -> common::WorkerId {
    common::WorkerId {
        tenant: id.tenant.to_string(),
        component: id.component.to_string(),
        worker: id.worker.to_string(),
    }
}

/// A refusal worth retrying elsewhere: the worker moved, or its executor is going away.
fn moved(code: &str) -> bool {
    matches!(code, "worker_moved" | "unavailable")
}

/// An error of the remote executor, as this one's.
fn remote(code: String, message: String) -> Error {
    Error::Remote { code, message }
}

impl Router {
    pub(crate) fn new(scheduler: SchedulerClient) -> Router {
        Router {
            scheduler,
            placements: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A client of the executor running `id` now.
    async fn client(&self, id: &WorkerId) -> Result<ExecutorClient<Channel>> {
        let shard = shard_of(id);
        let cached = lock(&self.placements).get(&shard).cloned();
        let address = match cached {
            Some(address) => address,
            None => {
                let placed = self.scheduler.locate(id).await.map_err(|s| {
                    // A refused token is a configuration error, not a move: no retrying.
                    let code = if s.code() == tonic::Code::Unauthenticated {
                        "internal"
                    } else {
                        "worker_moved"
                    };
                    remote(code.into(), s.message().to_string())
                })?;
                lock(&self.placements).insert(shard, placed.address.clone());
                placed.address
            }
        };
        if let Some(client) = lock(&self.clients).get(&address) {
            return Ok(client.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(address.clone())
            .map_err(|e| Error::Engine(format!("executor address {address}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let client = ExecutorClient::new(channel)
            .max_decoding_message_size(crate::grpc::MESSAGE_BYTES_MAX)
            .max_encoding_message_size(crate::grpc::MESSAGE_BYTES_MAX);
        lock(&self.clients).insert(address, client.clone());
        Ok(client)
    }

    fn forget(&self, id: &WorkerId) {
        lock(&self.placements).remove(&shard_of(id));
    }

    /// Runs `attempt` against the worker's executor until it answers, following moves.
    async fn routed<T, F, Fut>(&self, id: &WorkerId, attempt: F) -> Result<T>
    where
        F: Fn(ExecutorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let outcome = match self.client(id).await {
                Ok(client) => attempt(client).await,
                Err(e) => Err(e),
            };
            match outcome {
                Err(Error::Remote { code, message })
                    if moved(&code) && started.elapsed() < ROUTE_BUDGET =>
                {
                    tracing::debug!(worker = %id, %code, %message, "worker moved; asking where it is");
                    self.forget(id);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }

    pub(crate) async fn invoke(
        &self,
        id: &WorkerId,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<Completed> {
        // A key of our own, so that a retry after a lost answer cannot run it twice.
        let key = idempotency_key.unwrap_or_else(|| {
            let bytes: [u8; 16] = rand::random();
            format!("gw-{}", hex::encode(bytes))
        });
        let request = pb::InvokeRequest {
            worker: Some(wire(id)),
            function: function.to_string(),
            params_json: serde_json::Value::Array(params.to_vec()).to_string(),
            idempotency_key: key,
            limits: Some(crate::wire::limits_to(limits)),
        };
        self.routed(id, |mut client| {
            let request = request.clone();
            async move {
                let reply = client
                    .invoke(invicta_telemetry::propagation::request(request))
                    .await
                    .map_err(|s| crate::problem::from_status(&s))?
                    .into_inner();
                match reply.outcome {
                    Some(invoke_response::Outcome::ResultJson(json)) => Ok(Completed {
                        result: serde_json::from_str(&json)
                            .map_err(|e| Error::Corrupt(format!("a remote result: {e}")))?,
                        fuel_consumed: reply.fuel_consumed,
                    }),
                    Some(invoke_response::Outcome::Problem(p)) => {
                        Err(crate::problem::from_problem(p))
                    }
                    None => Err(Error::Corrupt(
                        "a remote invocation without an outcome".into(),
                    )),
                }
            }
        })
        .await
    }

    /// Serves an HTTP request on an executor: the one running the shard of a worker name
    /// drawn at random, so that requests spread over the executors.
    pub(crate) async fn serve_http(
        &self,
        tenant: &invicta_model::TenantId,
        component: &invicta_model::ComponentName,
        request: &crate::types::HandlerRequest,
        limits: &Limits,
    ) -> Result<crate::types::HandlerResponse> {
        let spread: u16 = rand::random();
        let worker = invicta_model::WorkerName::new(format!("http-{spread}"))
            .map_err(|e| Error::Engine(e.to_string()))?;
        let id = WorkerId {
            tenant: tenant.clone(),
            component: component.clone(),
            worker,
        };
        let fields = |pairs: &[(String, Vec<u8>)]| -> Vec<pb::HttpField> {
            pairs
                .iter()
                .map(|(name, value)| pb::HttpField {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect()
        };
        let message = pb::ServeHttpRequest {
            tenant: tenant.to_string(),
            component: component.to_string(),
            method: request.method.clone(),
            scheme: request.scheme.clone(),
            authority: request.authority.clone(),
            path_and_query: request.path_and_query.clone(),
            headers: fields(&request.headers),
            body: request.body.to_vec(),
            limits: Some(crate::wire::limits_to(limits)),
        };
        self.routed(&id, |mut client| {
            let message = message.clone();
            async move {
                let reply = client
                    .serve_http(invicta_telemetry::propagation::request(message))
                    .await
                    .map_err(|s| crate::problem::from_status(&s))?
                    .into_inner();
                match reply.outcome {
                    Some(pb::serve_http_response::Outcome::Answer(answer)) => {
                        let pairs = |fields: Vec<pb::HttpField>| {
                            fields.into_iter().map(|f| (f.name, f.value)).collect()
                        };
                        Ok(crate::types::HandlerResponse {
                            status: u16::try_from(answer.status).unwrap_or(500),
                            headers: pairs(answer.headers),
                            body: bytes::Bytes::from(answer.body),
                            trailers: pairs(answer.trailers),
                            fuel_consumed: answer.fuel_consumed,
                        })
                    }
                    Some(pb::serve_http_response::Outcome::Problem(p)) => {
                        Err(crate::problem::from_problem(p))
                    }
                    None => Err(Error::Corrupt("a remote handler without an outcome".into())),
                }
            }
        })
        .await
    }

    pub(crate) async fn create_worker(
        &self,
        id: &WorkerId,
        env: &[(String, String)],
        args: &[String],
        version: Option<u64>,
        limits: &Limits,
    ) -> Result<()> {
        let request = pb::CreateWorkerRequest {
            worker: Some(wire(id)),
            env: env.iter().cloned().collect(),
            args: args.to_vec(),
            limits: Some(crate::wire::limits_to(limits)),
            version,
        };
        self.routed(id, |mut client| {
            let request = request.clone();
            async move {
                client
                    .create_worker(invicta_telemetry::propagation::request(request))
                    .await
                    .map_err(|s| crate::problem::from_status(&s))?;
                Ok(())
            }
        })
        .await
    }

    pub(crate) async fn enqueue(
        &self,
        id: &WorkerId,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        schedule_at_ms: Option<u64>,
        limits: &Limits,
    ) -> Result<(String, bool)> {
        // As for invoke: a retry must find the first acceptance, not make a second.
        let key = idempotency_key.unwrap_or_else(|| {
            let bytes: [u8; 16] = rand::random();
            format!("gw-{}", hex::encode(bytes))
        });
        let request = pb::EnqueueRequest {
            worker: Some(wire(id)),
            function: function.to_string(),
            params_json: serde_json::Value::Array(params.to_vec()).to_string(),
            idempotency_key: key,
            schedule_at_ms,
            limits: Some(crate::wire::limits_to(limits)),
        };
        self.routed(id, |mut client| {
            let request = request.clone();
            async move {
                let reply = client
                    .enqueue(invicta_telemetry::propagation::request(request))
                    .await
                    .map_err(|s| crate::problem::from_status(&s))?
                    .into_inner();
                match reply.outcome {
                    Some(pb::enqueue_response::Outcome::IdempotencyKey(key)) => {
                        Ok((key, reply.fresh))
                    }
                    Some(pb::enqueue_response::Outcome::Problem(p)) => {
                        Err(crate::problem::from_problem(p))
                    }
                    None => Err(Error::Corrupt("a remote enqueue without an outcome".into())),
                }
            }
        })
        .await
    }

    pub(crate) async fn wake(&self, id: &WorkerId) -> Result<()> {
        let request = pb::GetWorkerRequest {
            worker: Some(wire(id)),
        };
        self.routed(id, |mut client| {
            let request = request.clone();
            async move {
                client
                    .wake(invicta_telemetry::propagation::request(request))
                    .await
                    .map_err(|s| crate::problem::from_status(&s))?;
                Ok(())
            }
        })
        .await
    }

    /// Resume, delete or move a worker at its executor.
    pub(crate) async fn control(&self, id: &WorkerId, action: Control) -> Result<()> {
        let worker = Some(wire(id));
        self.routed(id, |mut client| {
            let worker = worker.clone();
            async move {
                let get = || pb::GetWorkerRequest {
                    worker: worker.clone(),
                };
                let sent = match action {
                    Control::Resume => client
                        .resume(invicta_telemetry::propagation::request(get()))
                        .await
                        .map(drop),
                    Control::Delete => client
                        .delete_worker(invicta_telemetry::propagation::request(get()))
                        .await
                        .map(drop),
                    Control::SetVersion(version, method) => client
                        .set_version(invicta_telemetry::propagation::request(
                            pb::SetVersionRequest {
                                worker: worker.clone(),
                                version,
                                method: method.as_str().to_string(),
                            },
                        ))
                        .await
                        .map(drop),
                };
                sent.map_err(|s| crate::problem::from_status(&s))
            }
        })
        .await
    }

    /// The worker's status as its executor knows it (in memory or not): one attempt, no retry.
    pub(crate) async fn status(&self, id: &WorkerId) -> Result<crate::types::WorkerStatus> {
        let mut client = self.client(id).await?;
        let status = client
            .get_worker(invicta_telemetry::propagation::request(
                pb::GetWorkerRequest {
                    worker: Some(wire(id)),
                },
            ))
            .await
            .map_err(|s| {
                self.forget(id);
                crate::problem::from_status(&s)
            })?
            .into_inner();
        Ok(crate::types::WorkerStatus {
            status: status.status,
            component_version: status.component_version,
            oplog_length: status.oplog_length,
            pending_invocations: status.pending_invocations,
            error: status.error,
            archived_entries: status.archived_entries,
        })
    }

    /// What is at `path` of the worker's files, from its executor.
    pub(crate) async fn files(&self, id: &WorkerId, path: &str) -> Result<crate::files::FileView> {
        let mut client = self.client(id).await?;
        let reply = client
            .read_files(invicta_telemetry::propagation::request(
                pb::ReadFilesRequest {
                    worker: Some(wire(id)),
                    path: path.to_string(),
                },
            ))
            .await
            .map_err(|s| {
                self.forget(id);
                crate::problem::from_status(&s)
            })?
            .into_inner();
        Ok(crate::wire::files_from(reply))
    }

    /// Forks `source` into `id` at `id`'s executor; the entry it forked at.
    pub(crate) async fn fork(
        &self,
        id: &WorkerId,
        source: &WorkerId,
        at: Option<u64>,
        limits: &Limits,
    ) -> Result<u64> {
        let request = pb::ForkRequest {
            worker: Some(wire(id)),
            source: Some(wire(source)),
            at: at.unwrap_or(0),
            limits: Some(crate::wire::limits_to(limits)),
        };
        self.routed(id, |mut client| {
            let request = request.clone();
            async move {
                let forked = client
                    .fork(invicta_telemetry::propagation::request(request))
                    .await
                    .map_err(|s| crate::problem::from_status(&s))?
                    .into_inner();
                Ok(forked.at)
            }
        })
        .await
    }

    /// Reverts the worker at its executor; the range of entries skipped.
    pub(crate) async fn revert(&self, id: &WorkerId, to: u64) -> Result<(u64, u64)> {
        let request = pb::RevertRequest {
            worker: Some(wire(id)),
            to,
        };
        self.routed(id, |mut client| {
            let request = request.clone();
            async move {
                let skipped = client
                    .revert(invicta_telemetry::propagation::request(request))
                    .await
                    .map_err(|s| crate::problem::from_status(&s))?
                    .into_inner();
                Ok((skipped.from, skipped.to))
            }
        })
        .await
    }

    pub(crate) async fn interrupt(&self, id: &WorkerId) -> Result<bool> {
        let request = pb::GetWorkerRequest {
            worker: Some(wire(id)),
        };
        self.routed(id, |mut client| {
            let request = request.clone();
            async move {
                let status = client
                    .interrupt(invicta_telemetry::propagation::request(request))
                    .await
                    .map_err(|s| crate::problem::from_status(&s))?
                    .into_inner();
                Ok(status.interrupted)
            }
        })
        .await
    }
}
