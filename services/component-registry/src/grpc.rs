//! The registry's gRPC service (`proto/registry.proto`), and the client a process uses when the
//! registry runs elsewhere ([`Registry::route_through`](crate::Registry::route_through)).
//! Components stream up in chunks; errors travel as `code: message` in the status.

use std::time::Duration;

use futures::StreamExt;
use invicta_blob::BlobRef;
use invicta_engine::exports::{FunctionSignature, ParamSignature};
use invicta_model::{ComponentName, TenantId};
use invicta_proto::common;
use invicta_proto::registry::{self as pb, registry_server::Registry as RegistryRpc};
use tonic::{Request, Response, Status, Streaming};

use crate::{ComponentVersion, Error, Quota, Registry, Result, Uploaded};

/// Bytes per upload message: well under gRPC's default 4 MiB message limit.
const CHUNK_BYTES: usize = 1024 * 1024;

/// The gRPC face of a [`Registry`].
pub struct RegistryService {
    registry: Registry,
}

impl RegistryService {
    pub fn new(registry: Registry) -> pb::registry_server::RegistryServer<RegistryService> {
        pb::registry_server::RegistryServer::new(RegistryService { registry })
    }
}

fn names(tenant: String, component: String) -> Result<(TenantId, ComponentName), Status> {
    let bad = |e: invicta_model::ids::InvalidName| Status::invalid_argument(e.to_string());
    Ok((
        TenantId::new(tenant).map_err(bad)?,
        ComponentName::new(component).map_err(bad)?,
    ))
}

fn status_of(e: &Error) -> Status {
    let code = match e {
        Error::NotFound(_) | Error::VersionNotFound { .. } => tonic::Code::NotFound,
        Error::Store(_) | Error::Blob(_) | Error::Corrupt(_) | Error::Compile(_) => {
            tonic::Code::Internal
        }
        _ => tonic::Code::FailedPrecondition,
    };
    Status::new(code, format!("{}: {e}", e.code()))
}

fn version_to(v: &ComponentVersion, tenant: &str) -> pb::ComponentVersion {
    pb::ComponentVersion {
        tenant: tenant.to_string(),
        component: v.name.clone(),
        version: v.version,
        sha256: v.hash.clone(),
        size: v.size,
        exports: v
            .exports
            .iter()
            .map(|f| pb::ExportedFunction {
                name: f.name.clone(),
                params: f
                    .params
                    .iter()
                    .map(|p| pb::Parameter {
                        name: p.name.clone(),
                        r#type: p.ty.clone(),
                    })
                    .collect(),
                result: f.result.clone(),
            })
            .collect(),
        blob: v.blob.as_ref().map(|b| common::BlobRef {
            key: b.key.clone(),
            size: b.size,
            sha256: b.sha256.clone(),
        }),
        created_at_ms: v.created_at_ms,
        files: v
            .files
            .iter()
            .map(|f| pb::InitialFile {
                path: f.path.clone(),
                size: f.size,
                read_only: f.read_only,
            })
            .collect(),
        files_blob: v.files_blob.as_ref().map(|b| common::BlobRef {
            key: b.key.clone(),
            size: b.size,
            sha256: b.sha256.clone(),
        }),
        baseline: v.baseline,
    }
}

fn version_from(v: pb::ComponentVersion) -> ComponentVersion {
    ComponentVersion {
        name: v.component,
        version: v.version,
        hash: v.sha256,
        size: v.size,
        created_at_ms: v.created_at_ms,
        exports: v
            .exports
            .into_iter()
            .map(|f| FunctionSignature {
                name: f.name,
                params: f
                    .params
                    .into_iter()
                    .map(|p| ParamSignature {
                        name: p.name,
                        ty: p.r#type,
                    })
                    .collect(),
                result: f.result,
            })
            .collect(),
        blob: v.blob.map(|b| BlobRef {
            key: b.key,
            size: b.size,
            sha256: b.sha256,
        }),
        files: v
            .files
            .into_iter()
            .map(|f| crate::files::InitialFile {
                path: f.path,
                size: f.size,
                read_only: f.read_only,
            })
            .collect(),
        files_blob: v.files_blob.map(|b| BlobRef {
            key: b.key,
            size: b.size,
            sha256: b.sha256,
        }),
        baseline: v.baseline,
    }
}

#[tonic::async_trait]
impl RegistryRpc for RegistryService {
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::UploadRequest {
                part: Some(pb::upload_request::Part::Header(header)),
            })) => header,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the header",
                ));
            }
        };
        let (tenant, name) = names(header.tenant.clone(), header.component)?;
        let limit = self.registry.config().component_bytes_max;
        let mut bytes = Vec::with_capacity(usize::try_from(header.size.min(limit)).unwrap_or(0));
        while let Some(message) = stream.next().await {
            match message?.part {
                Some(pb::upload_request::Part::Chunk(chunk)) => {
                    if (bytes.len() + chunk.len()) as u64 > limit {
                        return Err(status_of(&Error::TooLarge {
                            size: bytes.len() + chunk.len(),
                            limit,
                        }));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                _ => return Err(Status::invalid_argument("only chunks follow the header")),
            }
        }
        let quota = Quota {
            components_max: header.components_max,
            bytes_max: header.bytes_max,
            memory_per_worker_bytes: match header.memory_per_worker_bytes {
                0 => u64::MAX,
                n => n,
            },
        };
        let uploaded = self
            .registry
            .upload(&tenant, &name, bytes, quota)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::UploadResponse {
            version: Some(version_to(&uploaded.version, tenant.as_str())),
            created: uploaded.created,
        }))
    }

    async fn get_component(
        &self,
        request: Request<pb::GetComponentRequest>,
    ) -> Result<Response<pb::Component>, Status> {
        let r = request.into_inner();
        let (tenant, name) = names(r.tenant, r.component)?;
        let version = (r.version > 0).then_some(r.version);
        let got = self
            .registry
            .get(&tenant, &name, version)
            .await
            .map_err(|e| status_of(&e))?;
        let versions = self
            .registry
            .versions(&tenant, &name)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::Component {
            latest: Some(version_to(&got, tenant.as_str())),
            versions,
        }))
    }

    async fn list_components(
        &self,
        request: Request<pb::ListComponentsRequest>,
    ) -> Result<Response<pb::ListComponentsResponse>, Status> {
        let tenant = TenantId::new(request.into_inner().tenant)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let list = self
            .registry
            .list(&tenant)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::ListComponentsResponse {
            components: list
                .iter()
                .map(|v| pb::Component {
                    latest: Some(version_to(v, tenant.as_str())),
                    versions: Vec::new(),
                })
                .collect(),
        }))
    }

    async fn delete_component(
        &self,
        request: Request<pb::GetComponentRequest>,
    ) -> Result<Response<pb::DeleteComponentResponse>, Status> {
        let r = request.into_inner();
        let (tenant, name) = names(r.tenant, r.component)?;
        self.registry
            .delete(&tenant, &name)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::DeleteComponentResponse {}))
    }

    async fn get_artifact(
        &self,
        _request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        // Executors read artifacts from the shared blob store themselves.
        Err(Status::unimplemented(
            "executors read precompiled artifacts from the shared blob store",
        ))
    }
}

/// A client of a registry at an address (`http://host:port`).
#[derive(Clone)]
pub(crate) struct RegistryClient {
    client: pb::registry_client::RegistryClient<tonic::transport::Channel>,
}

/// A status as this crate's error: the registry's own code when it sent one.
fn status_error(status: &Status) -> Error {
    let (code, message) = match status.message().split_once(": ") {
        _ if status.code() == tonic::Code::Unauthenticated => {
            ("internal".to_string(), status.message().to_string())
        }
        Some((code, message)) if !code.contains(' ') => (code.to_string(), message.to_string()),
        _ => ("unavailable".to_string(), status.message().to_string()),
    };
    Error::Remote { code, message }
}

impl RegistryClient {
    pub(crate) fn new(address: &str) -> Result<RegistryClient> {
        let channel = tonic::transport::Endpoint::from_shared(address.to_string())
            .map_err(|e| Error::Remote {
                code: "unavailable".into(),
                message: format!("registry address {address}: {e}"),
            })?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(RegistryClient {
            client: pb::registry_client::RegistryClient::new(channel),
        })
    }

    pub(crate) async fn upload(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        bytes: Vec<u8>,
        quota: Quota,
    ) -> Result<Uploaded> {
        let mut messages = vec![pb::UploadRequest {
            part: Some(pb::upload_request::Part::Header(pb::UploadHeader {
                tenant: tenant.to_string(),
                component: name.to_string(),
                size: bytes.len() as u64,
                components_max: quota.components_max,
                bytes_max: quota.bytes_max,
                memory_per_worker_bytes: match quota.memory_per_worker_bytes {
                    u64::MAX => 0,
                    n => n,
                },
            })),
        }];
        messages.extend(bytes.chunks(CHUNK_BYTES).map(|chunk| pb::UploadRequest {
            part: Some(pb::upload_request::Part::Chunk(chunk.to_vec())),
        }));
        let reply = self
            .client
            .clone()
            .upload(invicta_telemetry::propagation::request(
                futures::stream::iter(messages),
            ))
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        let version = reply
            .version
            .ok_or_else(|| Error::Corrupt("an upload reply without its version".into()))?;
        Ok(Uploaded {
            version: version_from(version),
            created: reply.created,
        })
    }

    pub(crate) async fn get(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        version: Option<u64>,
    ) -> Result<(ComponentVersion, Vec<u64>)> {
        let reply = self
            .client
            .clone()
            .get_component(invicta_telemetry::propagation::request(
                pb::GetComponentRequest {
                    tenant: tenant.to_string(),
                    component: name.to_string(),
                    version: version.unwrap_or(0),
                },
            ))
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        let latest = reply
            .latest
            .ok_or_else(|| Error::Corrupt("a component reply without its version".into()))?;
        Ok((version_from(latest), reply.versions))
    }

    pub(crate) async fn list(&self, tenant: &TenantId) -> Result<Vec<ComponentVersion>> {
        let reply = self
            .client
            .clone()
            .list_components(invicta_telemetry::propagation::request(
                pb::ListComponentsRequest {
                    tenant: tenant.to_string(),
                },
            ))
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        Ok(reply
            .components
            .into_iter()
            .filter_map(|c| c.latest.map(version_from))
            .collect())
    }

    pub(crate) async fn delete(&self, tenant: &TenantId, name: &ComponentName) -> Result<()> {
        self.client
            .clone()
            .delete_component(invicta_telemetry::propagation::request(
                pb::GetComponentRequest {
                    tenant: tenant.to_string(),
                    component: name.to_string(),
                    version: 0,
                },
            ))
            .await
            .map_err(|s| status_error(&s))?;
        Ok(())
    }
}
