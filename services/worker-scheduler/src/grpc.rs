//! The scheduler's gRPC service (`proto/scheduler.proto`) and the client executors and
//! gateways use to reach it.

use std::time::Duration;

use invicta_model::shards::ShardGrant;
use invicta_model::{ComponentName, TenantId, WorkerId, WorkerName};
use invicta_proto::common;
use invicta_proto::scheduler::{self as pb, scheduler_server::Scheduler as SchedulerRpc};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{Error, Heartbeat, Placement, Scheduler};

/// The gRPC face of a [`Scheduler`].
pub struct SchedulerService {
    scheduler: Scheduler,
}

impl SchedulerService {
    pub fn new(scheduler: Scheduler) -> pb::scheduler_server::SchedulerServer<SchedulerService> {
        pb::scheduler_server::SchedulerServer::new(SchedulerService { scheduler })
    }
}

fn status_of(e: &Error) -> Status {
    match e {
        Error::UnknownExecutor(_) => Status::not_found(e.to_string()),
        Error::Unplaced(_) => Status::unavailable(e.to_string()),
        Error::Invalid(_) => Status::invalid_argument(e.to_string()),
        Error::Store(_) | Error::Corrupt(_) => Status::internal(e.to_string()),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[tonic::async_trait]
impl SchedulerRpc for SchedulerService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        let lease = self
            .scheduler
            .register(&r.executor_id, &r.address)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::RegisterResponse {
            lease_ms: millis(lease),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let held = self
            .scheduler
            .heartbeat(&r.executor_id, &r.released, r.leaving)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::HeartbeatResponse {
            incoming: held.incoming,
            alone: held.alone,
            shards: held
                .shards
                .into_iter()
                .map(|g| pb::ShardLease {
                    shard: g.shard,
                    epoch: g.epoch,
                    draining: g.draining,
                })
                .collect(),
            lease_ms: millis(self.scheduler.lease),
        }))
    }

    async fn locate(
        &self,
        request: Request<pb::LocateRequest>,
    ) -> Result<Response<pb::Placement>, Status> {
        let span = tracing::info_span!("scheduler locate");
        invicta_telemetry::propagation::adopt(&span, request.metadata());
        self.locate_in(request.into_inner()).instrument(span).await
    }
}

impl SchedulerService {
    async fn locate_in(
        &self,
        request: pb::LocateRequest,
    ) -> Result<Response<pb::Placement>, Status> {
        let w = request
            .worker
            .ok_or_else(|| Status::invalid_argument("`worker` is required"))?;
        let bad = |e: invicta_model::ids::InvalidName| Status::invalid_argument(e.to_string());
        let id = WorkerId {
            tenant: TenantId::new(w.tenant).map_err(bad)?,
            component: ComponentName::new(w.component).map_err(bad)?,
            worker: WorkerName::new(w.worker).map_err(bad)?,
        };
        let placed = self
            .scheduler
            .locate(&id)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::Placement {
            shard: placed.shard,
            epoch: placed.epoch,
            executor_id: placed.executor_id,
            address: placed.address,
        }))
    }
}

/// A client of a scheduler at an address (`http://host:port`).
#[derive(Clone)]
pub struct SchedulerClient {
    client: pb::scheduler_client::SchedulerClient<tonic::transport::Channel>,
}

impl SchedulerClient {
    /// A client that connects lazily: a scheduler not up yet is retried on each call.
    pub fn new(address: &str) -> Result<SchedulerClient, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(address.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(SchedulerClient {
            client: pb::scheduler_client::SchedulerClient::new(channel),
        })
    }

    pub async fn register(&self, executor_id: &str, address: &str) -> Result<Duration, Status> {
        let reply = self
            .client
            .clone()
            .register(invicta_telemetry::propagation::request(
                pb::RegisterRequest {
                    executor_id: executor_id.to_string(),
                    address: address.to_string(),
                },
            ))
            .await?;
        Ok(Duration::from_millis(reply.into_inner().lease_ms))
    }

    /// Releases the shards the executor drained, and says whether it is shutting down;
    /// returns the shards it holds now, with their epochs and whether to drain them.
    pub async fn heartbeat(
        &self,
        executor_id: &str,
        released: &[u32],
        leaving: bool,
    ) -> Result<Heartbeat, Status> {
        let reply = self
            .client
            .clone()
            .heartbeat(invicta_telemetry::propagation::request(
                pb::HeartbeatRequest {
                    executor_id: executor_id.to_string(),
                    released: released.to_vec(),
                    leaving,
                },
            ))
            .await?
            .into_inner();
        Ok(Heartbeat {
            incoming: reply.incoming,
            alone: reply.alone,
            shards: reply
                .shards
                .into_iter()
                .map(|s| ShardGrant {
                    shard: s.shard,
                    epoch: s.epoch,
                    draining: s.draining,
                })
                .collect(),
        })
    }

    pub async fn locate(&self, worker: &WorkerId) -> Result<Placement, Status> {
        let reply = self
            .client
            .clone()
            .locate(invicta_telemetry::propagation::request(pb::LocateRequest {
                worker: Some(common::WorkerId {
                    tenant: worker.tenant.to_string(),
                    component: worker.component.to_string(),
                    worker: worker.worker.to_string(),
                }),
            }))
            .await?
            .into_inner();
        Ok(Placement {
            shard: reply.shard,
            epoch: reply.epoch,
            executor_id: reply.executor_id,
            address: reply.address,
        })
    }
}
