//! Telemetry setup for every Invicta process: `tracing` events to stderr (filtered by
//! `INVICTA_LOG`, default `info`), and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every span
//! exported as an OpenTelemetry trace over OTLP (gRPC) in batches.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace pipeline alive; dropping it flushes what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flush traces: {e}");
        }
    }
}

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("INVICTA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Installs the process's subscriber. `service` names the process in traces
/// (`service.name`).
pub fn init(service: String) -> Telemetry {
    // Colours for a terminal only: a log file or a pipe gets plain text, not escape codes.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let provider = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service.clone())
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!("OTLP export is off: {e}");
                None
            }
        }
    });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    tracing_subscriber::registry()
        .with(filter())
        .with(fmt)
        .with(otel)
        .init();
    Telemetry { provider }
}

/// A tracer provider that hands finished spans to `exporter` at once: for tests that check
/// traces in process.
pub fn provider_with<E>(exporter: E) -> SdkTracerProvider
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build()
}

/// What crosses with every internal gRPC call, in its metadata: the W3C trace context (a client
/// puts the current span's context there, and the server's span for the request continues that
/// trace, so one trace follows an invocation from the gateway through the scheduler to the
/// executor), and the cluster's token when one is configured ([`propagation::set_token`]),
/// which every role's gRPC server then requires ([`propagation::RequireToken`]).
pub mod propagation {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct Inject<'a>(&'a mut MetadataMap);

    impl Injector for Inject<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(key.as_bytes()),
                MetadataValue::try_from(value.as_str()),
            ) {
                self.0.insert(key, value);
            }
        }
    }

    struct Extract<'a>(&'a MetadataMap);

    impl Extractor for Extract<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0
                .keys()
                .filter_map(|k| match k {
                    KeyRef::Ascii(k) => Some(k.as_str()),
                    KeyRef::Binary(_) => None,
                })
                .collect()
        }
    }

    /// The cluster's token, as the `authorization` value this process's requests carry.
    static TOKEN: std::sync::OnceLock<MetadataValue<tonic::metadata::Ascii>> =
        std::sync::OnceLock::new();

    /// `Bearer <token>`, if the token can travel in a header; marked sensitive, so that it is
    /// neither indexed by HTTP/2 header compression nor shown by `Debug`.
    fn bearer(token: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
        if token.is_empty() {
            return Err("the cluster token is empty".into());
        }
        let mut value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the cluster token must be printable ASCII".to_string())?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Makes every request of this process ([`request`]) carry `token`. Set once, at start.
    pub fn set_token(token: &str) -> Result<(), String> {
        let value = bearer(token)?;
        // A second call with the same token changes nothing; another token is a mistake.
        let _ = TOKEN.set(value.clone());
        match TOKEN.get() {
            Some(set) if *set == value => Ok(()),
            _ => Err("the cluster token is already set, to another value".into()),
        }
    }

    /// `message` as a request carrying the current span's trace context, and the cluster's
    /// token if one is set.
    pub fn request<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let cx = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&cx, &mut Inject(request.metadata_mut()));
        if let Some(token) = TOKEN.get() {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// A server interceptor refusing every call that does not carry `Bearer <token>`
    /// (compared in constant time): `unauthenticated`.
    #[derive(Clone)]
    pub struct RequireToken {
        expected: std::sync::Arc<Vec<u8>>,
    }

    impl RequireToken {
        pub fn new(token: &str) -> Result<RequireToken, String> {
            Ok(RequireToken {
                expected: std::sync::Arc::new(bearer(token)?.as_bytes().to_vec()),
            })
        }
    }

    impl tonic::service::Interceptor for RequireToken {
        fn call(
            &mut self,
            request: tonic::Request<()>,
        ) -> Result<tonic::Request<()>, tonic::Status> {
            use subtle::ConstantTimeEq;
            let presented = request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if bool::from(presented.ct_eq(self.expected.as_slice())) {
                Ok(request)
            } else {
                // No `code: ` prefix: callers must not take this for the error of a user's
                // request (a wrong API key); it says the roles are configured apart.
                Err(tonic::Status::unauthenticated(
                    "the cluster token ([grpc] token, INVICTA_GRPC_TOKEN) is missing or differs \
                     from this role's",
                ))
            }
        }
    }

    /// Makes `span` (a server's span for a request) a child of the span the request's
    /// metadata names, if it names one.
    pub fn adopt(span: &tracing::Span, metadata: &MetadataMap) {
        let cx = TraceContextPropagator::new().extract(&Extract(metadata));
        if opentelemetry::trace::TraceContextExt::span(&cx)
            .span_context()
            .is_valid()
        {
            // A span that is already closed or not exported cannot take a parent; nothing to do.
            let _ = span.set_parent(cx);
        }
    }
}
