//! Billing's gRPC service (`proto/billing.proto`), and the client a gateway uses when billing
//! runs in its own process ([`Billing::connect`](crate::Billing::connect)). Errors travel as
//! `code: message` in the status; money travels as decimal strings.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use invicta_model::TenantId;
use invicta_proto::billing::{self as pb, billing_server::Billing as BillingRpc};
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    Billing, Error, Granularity, Invoice, InvoiceLine, KeyInfo, Plan, Prices, Principal, Result,
    Scope, Tenant, UsageRow,
};

/// The gRPC face of a [`Billing`] whose data is local.
pub struct BillingService {
    billing: Billing,
}

impl BillingService {
    pub fn new(billing: Billing) -> pb::billing_server::BillingServer<BillingService> {
        pb::billing_server::BillingServer::new(BillingService { billing })
    }

    /// Runs `work` in a span `billing <method>` that continues the caller's trace, and turns
    /// its error into a status.
    async fn serve<T, F>(
        &self,
        method: &'static str,
        metadata: &tonic::metadata::MetadataMap,
        work: F,
    ) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<T>>,
    {
        let span = tracing::info_span!("billing", otel.name = %format!("billing {method}"));
        invicta_telemetry::propagation::adopt(&span, metadata);
        work.instrument(span)
            .await
            .map(Response::new)
            .map_err(|e| status_of(&e))
    }
}

fn status_of(e: &Error) -> Status {
    let code = match e.code() {
        "unauthorized" => tonic::Code::Unauthenticated,
        "forbidden" => tonic::Code::PermissionDenied,
        "tenant_not_found" | "plan_not_found" | "key_not_found" => tonic::Code::NotFound,
        "tenant_exists" => tonic::Code::AlreadyExists,
        "invalid_request" => tonic::Code::InvalidArgument,
        "unavailable" => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    };
    Status::new(code, format!("{}: {e}", e.code()))
}

/// The codes billing's errors carry ([`Error::code`]).
const CODES: &[&str] = &[
    "unauthorized",
    "forbidden",
    "tenant_not_found",
    "plan_not_found",
    "key_not_found",
    "tenant_exists",
    "invalid_request",
    "unavailable",
    "internal",
];

/// A status as billing's error: the billing role's own code when it sent one; otherwise (a
/// proxy, the transport) `unavailable` or `internal` by the status's gRPC code.
fn status_error(status: &Status) -> Error {
    if let Some((code, message)) = status.message().split_once(": ")
        && CODES.contains(&code)
    {
        return Error::Remote {
            code: code.to_string(),
            message: message.to_string(),
        };
    }
    let code = match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Unknown
        | tonic::Code::ResourceExhausted => "unavailable",
        _ => "internal",
    };
    Error::Remote {
        code: code.to_string(),
        message: format!("the billing role: {}", status.message()),
    }
}

/// A reply that does not decode: the billing role speaks another version, or is broken.
fn garbled(e: Error) -> Error {
    Error::Corrupt(format!("a reply of the billing role: {e}"))
}

fn invalid(message: String) -> Error {
    Error::Remote {
        code: "invalid_request".into(),
        message,
    }
}

fn scopes_to(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_string()).collect()
}

fn scopes_from(scopes: &[String]) -> Result<Vec<Scope>> {
    scopes.iter().map(|s| Scope::parse(s)).collect()
}

fn decimal(field: &str, text: &str) -> Result<Decimal> {
    Decimal::from_str(text).map_err(|e| invalid(format!("{field} `{text}`: {e}")))
}

fn plan_to(plan: &Plan) -> pb::Plan {
    pb::Plan {
        name: plan.name.clone(),
        fuel_per_invocation: plan.fuel_per_invocation,
        fuel_per_month: plan.fuel_per_month,
        memory_per_worker_bytes: plan.memory_per_worker_bytes,
        workers_max: plan.workers_max,
        components_max: plan.components_max,
        component_bytes_max: plan.component_bytes_max,
        requests_per_second: plan.requests_per_second,
        burst: plan.burst,
        concurrent_invocations: plan.concurrent_invocations,
        prices: Some(pb::Prices {
            currency: plan.prices.currency.clone(),
            base_monthly: plan.prices.base_monthly.to_string(),
            per_billion_fuel: plan.prices.per_billion_fuel.to_string(),
            per_million_invocations: plan.prices.per_million_invocations.to_string(),
            per_gb_hour: plan.prices.per_gb_hour.to_string(),
        }),
        egress_hosts: plan.egress_hosts.as_ref().map(|hosts| pb::EgressHosts {
            hosts: hosts.clone(),
        }),
        retry_json: plan
            .retry
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
            .unwrap_or_default(),
        archive_retention_days: plan.archive_retention_days,
        files_per_worker_bytes: (plan.files_per_worker_bytes != crate::NO_LIMIT)
            .then_some(plan.files_per_worker_bytes),
    }
}

fn plan_from(plan: pb::Plan) -> Result<Plan> {
    let prices = match plan.prices {
        Some(p) => Prices {
            currency: p.currency,
            base_monthly: decimal("base_monthly", &p.base_monthly)?,
            per_billion_fuel: decimal("per_billion_fuel", &p.per_billion_fuel)?,
            per_million_invocations: decimal(
                "per_million_invocations",
                &p.per_million_invocations,
            )?,
            per_gb_hour: decimal("per_gb_hour", &p.per_gb_hour)?,
        },
        None => Prices::default(),
    };
    Ok(Plan {
        name: plan.name,
        fuel_per_invocation: plan.fuel_per_invocation,
        fuel_per_month: plan.fuel_per_month,
        memory_per_worker_bytes: plan.memory_per_worker_bytes,
        workers_max: plan.workers_max,
        components_max: plan.components_max,
        component_bytes_max: plan.component_bytes_max,
        requests_per_second: plan.requests_per_second,
        burst: plan.burst,
        concurrent_invocations: plan.concurrent_invocations,
        prices,
        egress_hosts: plan.egress_hosts.map(|e| e.hosts),
        retry: match plan.retry_json.as_str() {
            "" => None,
            json => {
                Some(serde_json::from_str(json).map_err(|e| invalid(format!("retry_json: {e}")))?)
            }
        },
        archive_retention_days: plan.archive_retention_days,
        files_per_worker_bytes: plan.files_per_worker_bytes.unwrap_or(crate::NO_LIMIT),
    })
}

fn tenant_to(t: Tenant) -> pb::Tenant {
    pb::Tenant {
        id: t.id,
        name: t.name,
        plan: t.plan,
        created_at_ms: t.created_at_ms,
    }
}

fn tenant_from(t: pb::Tenant) -> Tenant {
    Tenant {
        id: t.id,
        name: t.name,
        plan: t.plan,
        created_at_ms: t.created_at_ms,
    }
}

fn key_to(k: KeyInfo) -> pb::KeyInfo {
    pb::KeyInfo {
        scopes: scopes_to(&k.scopes),
        id: k.id,
        prefix: k.prefix,
        description: k.description,
        created_at_ms: k.created_at_ms,
        revoked: k.revoked,
    }
}

fn key_from(k: pb::KeyInfo) -> Result<KeyInfo> {
    Ok(KeyInfo {
        scopes: scopes_from(&k.scopes)?,
        id: k.id,
        prefix: k.prefix,
        description: k.description,
        created_at_ms: k.created_at_ms,
        revoked: k.revoked,
    })
}

fn granularity_to(g: Granularity) -> pb::Granularity {
    match g {
        Granularity::Hour => pb::Granularity::Hour,
        Granularity::Day => pb::Granularity::Day,
        Granularity::Month => pb::Granularity::Month,
    }
}

fn granularity_from(g: pb::Granularity) -> Granularity {
    match g {
        pb::Granularity::Hour => Granularity::Hour,
        pb::Granularity::Day => Granularity::Day,
        pb::Granularity::Month => Granularity::Month,
    }
}

fn row_to(r: UsageRow) -> pb::UsageRow {
    pb::UsageRow {
        period: r.period,
        component: r.component,
        invocations: r.invocations,
        fuel: r.fuel,
        wall_us: r.wall_us,
        memory_kib_ms: r.memory_kib_ms,
        oplog_bytes: r.oplog_bytes,
        storage_byte_hours: r.storage_byte_hours,
        http_requests: r.http_requests,
        http_request_bytes: r.http_request_bytes,
        http_response_bytes: r.http_response_bytes,
    }
}

fn row_from(r: pb::UsageRow) -> UsageRow {
    UsageRow {
        period: r.period,
        component: r.component,
        invocations: r.invocations,
        fuel: r.fuel,
        wall_us: r.wall_us,
        memory_kib_ms: r.memory_kib_ms,
        oplog_bytes: r.oplog_bytes,
        storage_byte_hours: r.storage_byte_hours,
        http_requests: r.http_requests,
        http_request_bytes: r.http_request_bytes,
        http_response_bytes: r.http_response_bytes,
    }
}

fn invoice_to(i: Invoice) -> pb::Invoice {
    pb::Invoice {
        tenant: i.tenant,
        month: i.month,
        plan: i.plan,
        currency: i.currency,
        lines: i
            .lines
            .into_iter()
            .map(|l| pb::InvoiceLine {
                item: l.item,
                quantity: l.quantity,
                unit: l.unit,
                unit_price: l.unit_price.to_string(),
                amount: l.amount.to_string(),
            })
            .collect(),
        total: i.total.to_string(),
    }
}

fn invoice_from(i: pb::Invoice) -> Result<Invoice> {
    let lines = i
        .lines
        .into_iter()
        .map(|l| {
            Ok(InvoiceLine {
                unit_price: decimal("unit_price", &l.unit_price)?,
                amount: decimal("amount", &l.amount)?,
                item: l.item,
                quantity: l.quantity,
                unit: l.unit,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Invoice {
        total: decimal("total", &i.total)?,
        tenant: i.tenant,
        month: i.month,
        plan: i.plan,
        currency: i.currency,
        lines,
    })
}

fn tenant_id(tenant: String) -> Result<TenantId> {
    TenantId::new(tenant).map_err(|e| Error::InvalidName(e.to_string()))
}

#[tonic::async_trait]
impl BillingRpc for BillingService {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        let key = request.get_ref().api_key.clone();
        self.serve("authenticate", request.metadata(), async {
            let p = self.billing.authenticate(&key).await?;
            Ok(pb::Principal {
                tenant: p.tenant.map(|t| t.to_string()),
                key_id: p.key_id,
                scopes: scopes_to(&p.scopes),
                operator: p.operator,
            })
        })
        .await
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::Plans>, Status> {
        self.serve("list plans", request.metadata(), async {
            let plans = self.billing.plans().await?;
            Ok(pb::Plans {
                plans: plans.iter().map(plan_to).collect(),
            })
        })
        .await
    }

    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let name = request.get_ref().name.clone();
        self.serve("get plan", request.metadata(), async {
            Ok(plan_to(&self.billing.plan(&name).await?))
        })
        .await
    }

    async fn put_plan(&self, request: Request<pb::Plan>) -> Result<Response<pb::Plan>, Status> {
        let (metadata, _, plan) = request.into_parts();
        self.serve("put plan", &metadata, async {
            let plan = plan_from(plan)?;
            Ok(plan_to(&self.billing.put_plan(plan).await?))
        })
        .await
    }

    async fn plan_of(&self, request: Request<pb::TenantRef>) -> Result<Response<pb::Plan>, Status> {
        let tenant = request.get_ref().tenant.clone();
        self.serve("plan of", request.metadata(), async {
            let tenant = tenant_id(tenant)?;
            Ok(plan_to(&self.billing.plan_of(&tenant).await?))
        })
        .await
    }

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let r = request.get_ref().clone();
        self.serve("create tenant", request.metadata(), async {
            let tenant = self
                .billing
                .create_tenant(&r.name, r.plan.as_deref())
                .await?;
            Ok(tenant_to(tenant))
        })
        .await
    }

    async fn get_tenant(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let tenant = request.get_ref().tenant.clone();
        self.serve("get tenant", request.metadata(), async {
            Ok(tenant_to(self.billing.tenant(&tenant).await?))
        })
        .await
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::Tenants>, Status> {
        self.serve("list tenants", request.metadata(), async {
            let tenants = self.billing.tenants().await?;
            Ok(pb::Tenants {
                tenants: tenants.into_iter().map(tenant_to).collect(),
            })
        })
        .await
    }

    async fn set_plan(
        &self,
        request: Request<pb::SetPlanRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let r = request.get_ref().clone();
        self.serve("set plan", request.metadata(), async {
            Ok(tenant_to(self.billing.set_plan(&r.tenant, &r.plan).await?))
        })
        .await
    }

    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreatedKey>, Status> {
        let r = request.get_ref().clone();
        self.serve("create key", request.metadata(), async {
            let scopes = scopes_from(&r.scopes)?;
            let (info, secret) = self
                .billing
                .create_key(&r.tenant, scopes, r.description)
                .await?;
            Ok(pb::CreatedKey {
                info: Some(key_to(info)),
                secret,
            })
        })
        .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::Keys>, Status> {
        let tenant = request.get_ref().tenant.clone();
        self.serve("list keys", request.metadata(), async {
            let keys = self.billing.keys(&tenant).await?;
            Ok(pb::Keys {
                keys: keys.into_iter().map(key_to).collect(),
            })
        })
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::KeyInfo>, Status> {
        let r = request.get_ref().clone();
        self.serve("revoke key", request.metadata(), async {
            Ok(key_to(self.billing.revoke_key(&r.tenant, &r.id).await?))
        })
        .await
    }

    async fn get_count(
        &self,
        request: Request<pb::CounterRequest>,
    ) -> Result<Response<pb::Counter>, Status> {
        let r = request.get_ref().clone();
        self.serve("get count", request.metadata(), async {
            let value = self.billing.count(&r.tenant, &r.kind).await?;
            Ok(pb::Counter { value })
        })
        .await
    }

    async fn get_usage(
        &self,
        request: Request<pb::CounterRequest>,
    ) -> Result<Response<pb::Counter>, Status> {
        let r = request.get_ref().clone();
        self.serve("get usage", request.metadata(), async {
            let value = self.billing.usage(&r.tenant, &r.kind, &r.period).await?;
            Ok(pb::Counter { value })
        })
        .await
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::UsageReport>, Status> {
        let r = request.get_ref().clone();
        self.serve("report", request.metadata(), async {
            let granularity = pb::Granularity::try_from(r.granularity)
                .map_err(|_| invalid(format!("unknown granularity {}", r.granularity)))?;
            let rows = self
                .billing
                .report(
                    &r.tenant,
                    r.from_hour,
                    r.to_hour,
                    granularity_from(granularity),
                )
                .await?;
            Ok(pb::UsageReport {
                rows: rows.into_iter().map(row_to).collect(),
            })
        })
        .await
    }

    async fn get_invoice(
        &self,
        request: Request<pb::InvoiceRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let r = request.get_ref().clone();
        self.serve("get invoice", request.metadata(), async {
            Ok(invoice_to(self.billing.invoice(&r.tenant, &r.month).await?))
        })
        .await
    }

    async fn get_stored(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::Stored>, Status> {
        let tenant = request.get_ref().tenant.clone();
        self.serve("get stored", request.metadata(), async {
            let bytes = self.billing.stored(&tenant).await?;
            Ok(pb::Stored {
                bytes: bytes.into_iter().collect(),
            })
        })
        .await
    }
}

/// A client of the billing role at an address (`http://host:port`).
#[derive(Clone)]
pub(crate) struct BillingClient {
    client: pb::billing_client::BillingClient<tonic::transport::Channel>,
}

/// Sends `$message` to the billing role's `$method`, with the current trace context, and
/// returns the reply's message.
macro_rules! call {
    ($self:ident . $method:ident ($message:expr)) => {
        $self
            .client
            .clone()
            .$method(invicta_telemetry::propagation::request($message))
            .await
            .map_err(|s| status_error(&s))?
            .into_inner()
    };
}

impl BillingClient {
    pub(crate) fn new(address: &str) -> Result<BillingClient> {
        let channel = tonic::transport::Endpoint::from_shared(address.to_string())
            .map_err(|e| Error::Remote {
                code: "unavailable".into(),
                message: format!("billing address {address}: {e}"),
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        Ok(BillingClient {
            client: pb::billing_client::BillingClient::new(channel),
        })
    }

    pub(crate) async fn authenticate(&self, bearer: &str) -> Result<Principal> {
        let p = call!(self.authenticate(pb::AuthenticateRequest {
            api_key: bearer.to_string(),
        }));
        Ok(Principal {
            tenant: p.tenant.map(tenant_id).transpose().map_err(garbled)?,
            key_id: p.key_id,
            scopes: scopes_from(&p.scopes).map_err(garbled)?,
            operator: p.operator,
        })
    }

    pub(crate) async fn plans(&self) -> Result<Vec<Plan>> {
        let reply = call!(self.list_plans(pb::ListPlansRequest {}));
        reply
            .plans
            .into_iter()
            .map(|p| plan_from(p).map_err(garbled))
            .collect()
    }

    pub(crate) async fn plan(&self, name: &str) -> Result<Plan> {
        plan_from(call!(self.get_plan(pb::GetPlanRequest {
            name: name.to_string(),
        })))
        .map_err(garbled)
    }

    pub(crate) async fn put_plan(&self, plan: Plan) -> Result<Plan> {
        plan_from(call!(self.put_plan(plan_to(&plan)))).map_err(garbled)
    }

    pub(crate) async fn plan_of(&self, tenant: &TenantId) -> Result<Plan> {
        plan_from(call!(self.plan_of(pb::TenantRef {
            tenant: tenant.to_string(),
        })))
        .map_err(garbled)
    }

    pub(crate) async fn create_tenant(&self, name: &str, plan: Option<&str>) -> Result<Tenant> {
        Ok(tenant_from(call!(self.create_tenant(
            pb::CreateTenantRequest {
                name: name.to_string(),
                plan: plan.map(str::to_string),
            }
        ))))
    }

    pub(crate) async fn tenant(&self, id: &str) -> Result<Tenant> {
        Ok(tenant_from(call!(self.get_tenant(pb::TenantRef {
            tenant: id.to_string(),
        }))))
    }

    pub(crate) async fn tenants(&self) -> Result<Vec<Tenant>> {
        let reply = call!(self.list_tenants(pb::ListTenantsRequest {}));
        Ok(reply.tenants.into_iter().map(tenant_from).collect())
    }

    pub(crate) async fn set_plan(&self, tenant: &str, plan: &str) -> Result<Tenant> {
        Ok(tenant_from(call!(self.set_plan(pb::SetPlanRequest {
            tenant: tenant.to_string(),
            plan: plan.to_string(),
        }))))
    }

    pub(crate) async fn create_key(
        &self,
        tenant: &str,
        scopes: &[Scope],
        description: &str,
    ) -> Result<(KeyInfo, String)> {
        let reply = call!(self.create_key(pb::CreateKeyRequest {
            tenant: tenant.to_string(),
            scopes: scopes_to(scopes),
            description: description.to_string(),
        }));
        let info = reply
            .info
            .ok_or_else(|| Error::Corrupt("a created key without its description".into()))?;
        Ok((key_from(info).map_err(garbled)?, reply.secret))
    }

    pub(crate) async fn keys(&self, tenant: &str) -> Result<Vec<KeyInfo>> {
        let reply = call!(self.list_keys(pb::TenantRef {
            tenant: tenant.to_string(),
        }));
        reply
            .keys
            .into_iter()
            .map(|k| key_from(k).map_err(garbled))
            .collect()
    }

    pub(crate) async fn revoke_key(&self, tenant: &str, id: &str) -> Result<KeyInfo> {
        key_from(call!(self.revoke_key(pb::RevokeKeyRequest {
            tenant: tenant.to_string(),
            id: id.to_string(),
        })))
        .map_err(garbled)
    }

    pub(crate) async fn count(&self, tenant: &str, kind: &str) -> Result<u64> {
        Ok(call!(self.get_count(pb::CounterRequest {
            tenant: tenant.to_string(),
            kind: kind.to_string(),
            period: String::new(),
        }))
        .value)
    }

    pub(crate) async fn usage(&self, tenant: &str, kind: &str, period: &str) -> Result<u64> {
        Ok(call!(self.get_usage(pb::CounterRequest {
            tenant: tenant.to_string(),
            kind: kind.to_string(),
            period: period.to_string(),
        }))
        .value)
    }

    pub(crate) async fn report(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
        granularity: Granularity,
    ) -> Result<Vec<UsageRow>> {
        let reply = call!(self.report(pb::ReportRequest {
            tenant: tenant.to_string(),
            from_hour: from,
            to_hour: to,
            granularity: granularity_to(granularity).into(),
        }));
        Ok(reply.rows.into_iter().map(row_from).collect())
    }

    pub(crate) async fn invoice(&self, tenant: &str, month: &str) -> Result<Invoice> {
        invoice_from(call!(self.get_invoice(pb::InvoiceRequest {
            tenant: tenant.to_string(),
            month: month.to_string(),
        })))
        .map_err(garbled)
    }

    pub(crate) async fn stored(
        &self,
        tenant: &str,
    ) -> Result<std::collections::BTreeMap<String, u64>> {
        let reply = call!(self.get_stored(pb::TenantRef {
            tenant: tenant.to_string(),
        }));
        Ok(reply.bytes.into_iter().collect())
    }
}
