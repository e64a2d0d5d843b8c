//! Durable outgoing HTTP: `wasi:http/outgoing-handler`, so that any component using a standard
//! HTTP client works, with every request a remote write.
//!
//! Live, a request first appends `BeginRemoteWrite` (with an idempotency key derived from the
//! worker and that entry's oplog index) and waits until it is durable; only then does the request
//! leave, carrying the key as its `Idempotency-Key` header. The outcome — a response (status,
//! headers, body) or an error, including timeouts and refusals — is appended as an
//! `ImportedFunctionInvoked` entry followed by `EndRemoteWrite`. Replay returns the recorded
//! outcome and sends nothing. A request that began but never ended (the process died in
//! between) is sent again with the same key: at least once, and once in effect at any server that
//! honours the header.
//!
//! Egress: private, loopback, link-local and other non-public addresses are refused unless the
//! executor's configuration allows the host, and a tenant's plan may restrict hosts to a list.
//! A request connects to the very address the check approved (a DNS answer changing in between
//! cannot redirect it); HTTPS checks the certificate against the host name, trusting the public
//! web's authorities (`webpki-roots`) and any listed in `extra_root_certificates`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use invicta_model::Value;
use invicta_model::oplog::OplogEntry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::durability::{self as host, RemoteWrite, Shared};

/// The host function name outgoing requests are recorded under.
pub(crate) const HOST_FUNCTION: &str = "wasi:http/outgoing-handler.handle";

/// The executor's outgoing-HTTP settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Hosts (names or addresses) that may be reached although they are private, loopback or
    /// link-local. Empty by default: such addresses are refused (SSRF).
    pub allow_private_hosts: Vec<String>,
    /// The longest an outgoing request may take, connection to last byte (default 30,000 ms).
    pub timeout_ms: u64,
    /// The largest response body recorded (default 1 MiB); a larger one fails the request.
    pub response_bytes_max: usize,
    /// Response bodies larger than this (default 64 KiB) are kept in the blob store, and the
    /// oplog records their reference.
    pub inline_body_bytes_max: usize,
    /// PEM files of certificate authorities trusted for HTTPS besides the public web's (a
    /// private CA, say). Empty by default.
    pub extra_root_certificates: Vec<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allow_private_hosts: Vec::new(),
            timeout_ms: 30_000,
            response_bytes_max: 1024 * 1024,
            inline_body_bytes_max: 64 * 1024,
            extra_root_certificates: Vec::new(),
        }
    }
}

/// Where a worker's requests may go: the executor's settings and the tenant's allow-list.
#[derive(Debug, Clone)]
pub(crate) struct Egress {
    pub config: Arc<HttpConfig>,
    /// The tenant's plan's hosts; `None` allows any public host.
    pub hosts: Option<Vec<String>>,
    /// How HTTPS requests are made: the trusted authorities.
    pub tls: Arc<rustls::ClientConfig>,
}

/// The TLS client configuration of outgoing requests: the public web's authorities and the
/// configured extra ones, with the aws-lc-rs provider.
pub(crate) fn tls_config(config: &HttpConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in &config.extra_root_certificates {
        let shown = path.display();
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("extra_root_certificates: {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("extra_root_certificates: {shown}: {e}"))?;
        if certificates.is_empty() {
            return Err(format!(
                "extra_root_certificates: {shown} holds no PEM certificate"
            ));
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|e| format!("extra_root_certificates: {shown}: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Asks the worker's actor to make every pending entry durable; the answer says whether it is.
pub(crate) type Checkpoints = mpsc::UnboundedSender<oneshot::Sender<bool>>;

/// The worker's `wasi:http` hooks.
pub(crate) struct DurableHttp {
    pub durability: Shared,
    pub checkpoints: Checkpoints,
    pub egress: Arc<Mutex<Egress>>,
    /// The worker and its incarnation, for idempotency keys.
    pub worker: invicta_model::WorkerId,
    pub incarnation: String,
    /// Where large response bodies are kept.
    pub blobs: invicta_blob::BlobStore,
}

/// Calls `f` with the blob key of every response body kept in the blob store that `value` (a
/// recorded host call's response) names, to move them: a fork's copies name its own.
pub(crate) fn for_each_body_blob(value: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match value {
        Value::Record(fields) => {
            for (name, field) in fields.iter_mut() {
                if name == "body_blob"
                    && let Value::Record(blob) = field
                {
                    for (part, v) in blob.iter_mut() {
                        if part == "key"
                            && let Value::String(key) = v
                        {
                            f(key);
                        }
                    }
                } else {
                    for_each_body_blob(field, f);
                }
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for item in items {
                for_each_body_blob(item, f);
            }
        }
        Value::Variant(_, Some(inner))
        | Value::Option(Some(inner))
        | Value::Result(Ok(Some(inner)) | Err(Some(inner))) => for_each_body_blob(inner, f),
        _ => {}
    }
}

/// Where the worker's large response bodies are kept in the blob store: one prefix per worker
/// (named by a hash, as worker names may hold characters blob keys may not).
pub(crate) fn bodies_prefix(worker: &invicta_model::WorkerId) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(worker.to_string().as_bytes());
    format!("http-bodies/{}", hex::encode(&digest[..16]))
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

/// An outcome as the oplog keeps it.
fn outcome_value(outcome: &Result<Recorded, String>) -> Value {
    match outcome {
        Ok(r) => Value::Result(Ok(Some(Box::new(Value::Record(vec![
            ("status".into(), Value::U16(r.status)),
            (
                "headers".into(),
                Value::List(
                    r.headers
                        .iter()
                        .map(|(k, v)| {
                            Value::Tuple(vec![Value::String(k.clone()), Value::Bytes(v.clone())])
                        })
                        .collect(),
                ),
            ),
            match &r.blob {
                None => ("body".into(), Value::Bytes(r.body.clone())),
                Some(blob) => (
                    "body_blob".into(),
                    Value::Record(vec![
                        ("key".into(), Value::String(blob.key.clone())),
                        ("size".into(), Value::U64(blob.size)),
                        ("sha256".into(), Value::String(blob.sha256.clone())),
                    ]),
                ),
            },
        ]))))),
        Err(e) => Value::Result(Err(Some(Box::new(Value::String(e.clone()))))),
    }
}

/// The bytes recorded as `Bytes`, or (in entries recorded before) as a `List` of `U8`.
fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    value.as_bytes().map(std::borrow::Cow::into_owned)
}

pub(crate) fn outcome_from(value: &Value) -> Option<Result<Recorded, String>> {
    match value {
        Value::Result(Ok(Some(record))) => {
            let Value::Record(fields) = record.as_ref() else {
                return None;
            };
            let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            let status = match field("status")? {
                Value::U16(s) => *s,
                _ => return None,
            };
            let headers = match field("headers")? {
                Value::List(items) => items
                    .iter()
                    .map(|h| match h {
                        Value::Tuple(kv) => match kv.as_slice() {
                            [Value::String(k), v] => Some((k.clone(), bytes_of(v)?)),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?,
                _ => return None,
            };
            if let Some(Value::Record(blob)) = field("body_blob") {
                let part = |name: &str| blob.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                let (Some(Value::String(key)), Some(Value::U64(size)), Some(Value::String(sha256))) =
                    (part("key"), part("size"), part("sha256"))
                else {
                    return None;
                };
                return Some(Ok(Recorded {
                    status,
                    headers,
                    body: Vec::new(),
                    blob: Some(invicta_blob::BlobRef {
                        key: key.clone(),
                        size: *size,
                        sha256: sha256.clone(),
                    }),
                }));
            }
            Some(Ok(Recorded {
                status,
                headers,
                body: bytes_of(field("body")?)?,
                blob: None,
            }))
        }
        Value::Result(Err(Some(e))) => match e.as_ref() {
            Value::String(s) => Some(Err(s.clone())),
            _ => None,
        },
        _ => None,
    }
}

/// A response as recorded: whole, its body inline or in the blob store.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    /// The body, unless it is in the blob store.
    body: Vec<u8>,
    blob: Option<invicta_blob::BlobRef>,
}

impl Recorded {
    /// Moves a large body to the blob store; the record keeps its reference.
    async fn keep_body(
        &mut self,
        blobs: &invicta_blob::BlobStore,
        prefix: &str,
        inline_max: usize,
    ) -> Result<(), String> {
        if self.body.len() <= inline_max {
            return Ok(());
        }
        let blob = blobs
            .put_bytes(prefix, &self.body)
            .await
            .map_err(|e| format!("the response body could not be stored: {e}"))?;
        self.blob = Some(blob);
        Ok(())
    }

    /// Brings a body kept in the blob store back.
    async fn load_body(mut self, blobs: &invicta_blob::BlobStore) -> Result<Recorded, String> {
        if let Some(blob) = self.blob.take() {
            self.body = blobs
                .get_verified(&blob)
                .await
                .map_err(|e| format!("the recorded response body is unreadable: {e}"))?
                .to_vec();
        }
        Ok(self)
    }
}

type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
);

/// The guest's view of an outcome.
fn response_of(outcome: Result<Recorded, String>) -> Result<Sent, HttpError> {
    let r = outcome.map_err(|message| error_from(&message))?;
    let mut builder = http::Response::builder().status(r.status);
    for (name, value) in &r.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let body = Full::new(Bytes::from(r.body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let response = builder
        .body(body)
        .map_err(|e| HttpError::InternalError(Some(e.to_string())))?;
    Ok((
        response,
        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
    ))
}

fn respond(
    outcome: Result<Recorded, String>,
    blobs: invicta_blob::BlobStore,
    durability: Shared,
) -> SendFuture {
    Box::new(async move {
        match outcome {
            Ok(recorded) => match recorded.load_body(&blobs).await {
                Ok(recorded) => response_of(Ok(recorded)),
                // A recorded body that is gone cannot be replayed faithfully: the worker fails.
                Err(message) => Err(HttpError::InternalError(Some(
                    host::lock(&durability).diverge(message),
                ))),
            },
            Err(e) => response_of(Err(e)),
        }
    })
}

/// The guest-facing error of a recorded failure.
fn error_from(message: &str) -> HttpError {
    match message.split(':').next().unwrap_or_default() {
        "denied" => HttpError::HttpRequestDenied,
        "timeout" => HttpError::ConnectionTimeout,
        "refused" => HttpError::ConnectionRefused,
        "dns" => HttpError::DestinationNotFound,
        "too_large" => HttpError::HttpResponseBodySize(None),
        "tls" => HttpError::TlsProtocolError,
        _ => HttpError::InternalError(Some(message.to_string())),
    }
}

impl WasiHttpHooks for DurableHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let mut d = host::lock(&self.durability);
        let (begin, key, fresh) = match d.replay_remote_write(HOST_FUNCTION) {
            Err(message) => {
                return Box::new(async move { Err(HttpError::InternalError(Some(message))) });
            }
            Ok(Some(RemoteWrite::Ended(response))) => {
                let Some(outcome) = outcome_from(&response) else {
                    let message =
                        d.diverge("replay diverged: a recorded HTTP response is unreadable".into());
                    return Box::new(async move { Err(HttpError::InternalError(Some(message))) });
                };
                // The guest may still be writing the body: take it, as sending would, and drop it.
                tokio::spawn(async move {
                    let _ = request.into_body().collect().await;
                });
                return respond(outcome, self.blobs.clone(), self.durability.clone());
            }
            Ok(Some(RemoteWrite::Unfinished { begin, key })) => (begin, key, false),
            Ok(None) => {
                let index = d.next_index();
                let key = crate::durability::key_at(&self.worker, &self.incarnation, index);
                let begin = d.append(OplogEntry::BeginRemoteWrite {
                    host_function: HOST_FUNCTION.into(),
                    idempotency_key: key.clone(),
                });
                (begin, key, true)
            }
        };
        d.open_requests += 1;
        drop(d);
        let open = OpenRequest(self.durability.clone());
        let durability = self.durability.clone();
        let blobs = self.blobs.clone();
        let prefix = bodies_prefix(&self.worker);
        let checkpoints = self.checkpoints.clone();
        let egress = self
            .egress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Box::new(async move {
            let _open = open;
            if fresh {
                // Nothing leaves before the oplog says it began.
                let (tx, rx) = oneshot::channel();
                let durable = checkpoints.send(tx).is_ok() && rx.await.unwrap_or(false);
                if !durable {
                    return Err(HttpError::InternalError(Some(
                        "the request's start could not be made durable".into(),
                    )));
                }
            }
            let (mut outcome, received) = send(request, options, &key, &egress).await;
            if let Ok(recorded) = &mut outcome
                && let Err(e) = recorded
                    .keep_body(&blobs, &prefix, egress.config.inline_body_bytes_max)
                    .await
            {
                outcome = Err(e);
            }
            crate::support::failpoint("INVICTA_FAILPOINT_HTTP_SENT");
            {
                let mut d = host::lock(&durability);
                if let Some((sent, received)) = received {
                    d.http_requests += 1;
                    d.http_request_bytes += sent;
                    d.http_response_bytes += received;
                }
                d.append(OplogEntry::ImportedFunctionInvoked {
                    host_function: HOST_FUNCTION.into(),
                    request: None,
                    response: outcome_value(&outcome),
                });
                d.append(OplogEntry::EndRemoteWrite { begin });
            }
            response_of(outcome)
        })
    }
}

/// `wasi:http` hooks that send live and record nothing: an ephemeral handler's requests, under
/// the same egress policy as a worker's.
pub(crate) struct LiveHttp {
    pub egress: Egress,
}

impl WasiHttpHooks for LiveHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let egress = self.egress.clone();
        Box::new(async move {
            let (outcome, _) = send(request, options, "", &egress).await;
            response_of(outcome)
        })
    }
}

/// An outgoing request in flight, counted while it lives.
struct OpenRequest(host::Shared);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let mut d = host::lock(&self.0);
        d.open_requests = d.open_requests.saturating_sub(1);
    }
}

/// Whether an address is one the public internet cannot reach (or should not be reached from).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 0
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xC0) == 64)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// Checks the request against the egress policy; `Err` says why not. `Ok(Some(ips))` are the
/// public addresses the check resolved the host to, which the connection must then use.
async fn admit(host: &str, port: u16, egress: &Egress) -> Result<Option<Vec<IpAddr>>, String> {
    if let Some(hosts) = &egress.hosts
        && !hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    {
        return Err(format!(
            "denied: {host} is not in the tenant's allowed hosts"
        ));
    }
    if egress
        .config
        .allow_private_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
    {
        return Ok(None);
    }
    let addresses: Vec<IpAddr> = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("dns: {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if let Some(ip) = addresses.iter().find(|ip| is_private(**ip)) {
        return Err(format!(
            "denied: {host} resolves to {ip}, a private address"
        ));
    }
    if addresses.is_empty() {
        return Err(format!("dns: {host} has no address"));
    }
    Ok(Some(addresses))
}

/// Where a request connects, and the name its certificate must carry.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `host:port`, or the approved `address:port`s, tried in order.
    connect: Vec<String>,
    /// For `https`: the name the server's certificate is checked against, always the URI's
    /// host (never the pinned address).
    tls_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// The target of a request to `uri`: the addresses the egress check approved when it resolved
/// the host, so that a DNS answer changing in between cannot redirect the request (to a
/// private address, say); the host itself otherwise (an allowed private host).
fn target(uri: &http::Uri, approved: Option<Vec<IpAddr>>) -> Result<Target, String> {
    use rustls::pki_types::ServerName;
    let host = uri
        .host()
        .ok_or_else(|| "error: the request has no host".to_string())?;
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_matches(['[', ']']);
    let connect = match approved {
        Some(ips) => ips
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(ip) => format!("{ip}:{port}"),
                IpAddr::V6(ip) => format!("[{ip}]:{port}"),
            })
            .collect(),
        None if bare.contains(':') => vec![format!("[{bare}]:{port}")],
        None => vec![format!("{bare}:{port}")],
    };
    let tls_name = if https {
        Some(match bare.parse::<IpAddr>() {
            Ok(ip) => ServerName::from(ip),
            Err(_) => ServerName::try_from(bare.to_string())
                .map_err(|e| format!("tls: `{host}` is not a valid server name: {e}"))?,
        })
    } else {
        None
    };
    Ok(Target { connect, tls_name })
}

/// Connects to the target (with TLS for `https`) and sends the request over HTTP/1.1: the
/// response, and the connection's driver, which runs until the body has been read.
async fn connect_and_send(
    mut request: http::Request<WasiBody>,
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
) -> Result<
    (
        http::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let mut failed = "error: no address to connect to".to_string();
    let mut connected = None;
    for address in &target.connect {
        match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                connected = Some(stream);
                break;
            }
            Ok(Err(e)) => {
                failed = match e.kind() {
                    std::io::ErrorKind::TimedOut => format!("timeout: connect to {address}: {e}"),
                    std::io::ErrorKind::ConnectionRefused => {
                        format!("refused: connect to {address}: {e}")
                    }
                    _ if e.to_string().contains("lookup") => format!("dns: {address}: {e}"),
                    _ => format!("refused: connect to {address}: {e}"),
                };
            }
            Err(_) => failed = format!("timeout: connecting to {address}"),
        }
    }
    let stream = connected.ok_or(failed)?;
    // HTTP/1.1 wants the host; the request line carries only the path (no proxy here).
    if !request.headers().contains_key(http::header::HOST)
        && let Some(authority) = request.uri().authority()
        && let Ok(value) = http::HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(http::header::HOST, value);
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse::<http::Uri>()
        .map_err(|e| format!("error: the request's path: {e}"))?;
    *request.uri_mut() = path;
    match &target.tls_name {
        Some(name) => {
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name.clone(), stream)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            send_over(
                hyper_util::rt::TokioIo::new(stream),
                request,
                connect_timeout,
                first_byte_timeout,
            )
            .await
        }
        None => {
            send_over(
                hyper_util::rt::TokioIo::new(stream),
                request,
                connect_timeout,
                first_byte_timeout,
            )
            .await
        }
    }
}

async fn send_over<I>(
    io: I,
    request: http::Request<WasiBody>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
) -> Result<
    (
        http::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<()>,
    ),
    String,
>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        tokio::time::timeout(connect_timeout, hyper::client::conn::http1::handshake(io))
            .await
            .map_err(|_| "timeout: the HTTP handshake".to_string())?
            .map_err(|e| format!("error: the HTTP handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "outgoing HTTP connection");
        }
    });
    match tokio::time::timeout(first_byte_timeout, sender.send_request(request)).await {
        Ok(Ok(response)) => Ok((response, driver)),
        Ok(Err(e)) => {
            driver.abort();
            Err(if e.is_timeout() {
                format!("timeout: {e}")
            } else {
                format!("error: {e}")
            })
        }
        Err(_) => {
            driver.abort();
            Err(format!(
                "timeout: no response within {} ms",
                first_byte_timeout.as_millis()
            ))
        }
    }
}

/// Sends the request, unless policy refuses it: the outcome, and the body bytes sent and
/// received if the request went out.
async fn send(
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    key: &str,
    egress: &Egress,
) -> (Result<Recorded, String>, Option<(u64, u64)>) {
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let target = match admit(&host, port, egress)
        .await
        .and_then(|ip| target(&uri, ip))
    {
        Ok(target) => target,
        Err(refused) => return (Err(refused), None),
    };
    // The body streams from the guest as it is sent: counted on its way out.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let request = request.map(move |body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counter.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            frame
        })
        .boxed_unsync()
    });
    let outcome = exchange(request, &target, options, key, egress).await;
    let received = outcome.as_ref().map_or(0, |r| r.body.len() as u64);
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    (outcome, Some((sent, received)))
}

async fn exchange(
    mut request: http::Request<WasiBody>,
    target: &Target,
    options: Option<RequestOptions>,
    key: &str,
    egress: &Egress,
) -> Result<Recorded, String> {
    if !key.is_empty()
        && let Ok(value) = http::HeaderValue::from_str(key)
    {
        request.headers_mut().insert("idempotency-key", value);
    }
    let config = &egress.config;
    let limit = Duration::from_millis(config.timeout_ms.max(1));
    let exchange = async {
        // The guest's own timeouts, within the executor's limit for the whole exchange.
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(limit)
            .min(limit);
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(limit)
            .min(limit);
        let (response, driver) = connect_and_send(
            request,
            target,
            &egress.tls,
            connect_timeout,
            first_byte_timeout,
        )
        .await?;
        let (parts, body) = response.into_parts();
        let limited = http_body_util::Limited::new(body, config.response_bytes_max);
        let body = limited.collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!(
                    "too_large: the response body exceeds {} bytes",
                    config.response_bytes_max
                )
            } else {
                format!("error: {e}")
            }
        })?;
        driver.abort();
        Ok(Recorded {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_bytes().to_vec(),
            blob: None,
        })
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "timeout: no response within {} ms",
            limit.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                is_private(private.parse().unwrap_or(IpAddr::from([1, 1, 1, 1]))),
                "{private}"
            );
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(
                !is_private(public.parse().unwrap_or(IpAddr::from([10, 0, 0, 1]))),
                "{public}"
            );
        }
    }

    #[test]
    fn outcomes_round_trip_through_values() {
        let recorded = Recorded {
            status: 201,
            headers: vec![("x-a".into(), b"1".to_vec())],
            body: b"hello".to_vec(),
            blob: None,
        };
        let back = outcome_from(&outcome_value(&Ok(recorded.clone())));
        match back {
            Some(Ok(r)) => {
                assert_eq!(
                    (r.status, r.headers, r.body),
                    (201, recorded.headers.clone(), recorded.body.clone())
                );
            }
            other => panic!("{other:?}"),
        }
        let kept = Recorded {
            body: Vec::new(),
            blob: Some(invicta_blob::BlobRef {
                key: "http-bodies/ab/cd".into(),
                size: 70_000,
                sha256: "ef".into(),
            }),
            ..recorded
        };
        match outcome_from(&outcome_value(&Ok(kept.clone()))) {
            Some(Ok(r)) => assert_eq!((r.body, r.blob), (Vec::new(), kept.blob)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outcome_from(&outcome_value(&Err("denied: x".into()))),
            Some(Err(m)) if m == "denied: x"
        ));
    }

    #[tokio::test]
    async fn private_hosts_are_refused_unless_allowed() -> Result<(), String> {
        let egress = Egress {
            config: Arc::default(),
            hosts: None,
            tls: tls_config(&HttpConfig::default())?,
        };
        assert!(
            admit("127.0.0.1", 80, &egress)
                .await
                .is_err_and(|e| e.starts_with("denied"))
        );
        assert!(admit("169.254.169.254", 80, &egress).await.is_err());
        let allowed = Egress {
            config: Arc::new(HttpConfig {
                allow_private_hosts: vec!["127.0.0.1".into()],
                ..Default::default()
            }),
            ..egress.clone()
        };
        assert!(matches!(admit("127.0.0.1", 80, &allowed).await, Ok(None)));
        // A public literal is approved as itself.
        assert_eq!(
            admit("1.1.1.1", 80, &egress).await,
            Ok(Some(vec![IpAddr::from([1, 1, 1, 1])]))
        );
        let listed = Egress {
            hosts: Some(vec!["example.com".into()]),
            ..allowed
        };
        assert!(
            admit("127.0.0.1", 80, &listed)
                .await
                .is_err_and(|e| e.contains("allowed hosts"))
        );
        Ok(())
    }

    /// A request connects to the address the egress check approved, HTTPS included, and the
    /// certificate is checked against the host's name, never the address.
    #[test]
    fn requests_connect_to_the_approved_address() -> Result<(), String> {
        use rustls::pki_types::ServerName;
        let uri = |u: &str| u.parse::<http::Uri>().map_err(|e| e.to_string());
        let v6: IpAddr = "2606:4700::1111".parse().map_err(|e| format!("{e}"))?;
        let approved = || Some(vec![IpAddr::from([93, 184, 215, 14]), v6]);
        assert_eq!(
            target(&uri("http://example.com/x?y")?, approved())?,
            Target {
                connect: vec!["93.184.215.14:80".into(), "[2606:4700::1111]:80".into()],
                tls_name: None
            }
        );
        assert_eq!(
            target(&uri("https://example.com/x")?, approved())?,
            Target {
                connect: vec!["93.184.215.14:443".into(), "[2606:4700::1111]:443".into()],
                tls_name: Some(ServerName::try_from("example.com").map_err(|e| e.to_string())?)
            }
        );
        assert_eq!(
            target(&uri("https://[2606:4700::1111]:8443/")?, Some(vec![v6]))?,
            Target {
                connect: vec!["[2606:4700::1111]:8443".into()],
                tls_name: Some(ServerName::from(v6))
            }
        );
        // An allowed private host is not resolved beforehand: it connects by name.
        assert_eq!(
            target(&uri("https://localhost:9/")?, None)?.connect,
            vec!["localhost:9".to_string()]
        );
        Ok(())
    }

    #[test]
    fn extra_root_certificates_must_be_readable_pem() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").map_err(|e| e.to_string())?;
        for (path, says) in [
            (dir.path().join("missing.pem"), "missing.pem"),
            (empty, "holds no PEM certificate"),
        ] {
            let config = HttpConfig {
                extra_root_certificates: vec![path],
                ..Default::default()
            };
            let refused = tls_config(&config).err().unwrap_or_default();
            assert!(refused.contains(says), "{refused}");
        }
        Ok(())
    }
}
