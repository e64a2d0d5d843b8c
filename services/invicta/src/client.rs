//! The client subcommands: components, workers, keys, usage and the operator's tenants, over
//! the public API. Endpoint and key come from flags, else `INVICTA_URL` / `INVICTA_API_KEY`,
//! else the profile in use (`invicta profile`); output is a human table, or the API's JSON with
//! `--json`.
//!
//! Exit codes: 0 success, 2 usage error (clap's), 3 the API refused (its problem is printed),
//! 4 the server could not be reached.

use crate::session::{Client, Failure, Output};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

/// The API answered with an error.
const EXIT_API: u8 = 3;
/// The server could not be reached, or answered with something that is not the API.
const EXIT_NETWORK: u8 = 4;

/// Where the server is when nothing says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The server's URL [default: the profile's, else http://127.0.0.1:8080]
    #[arg(long, global = true, env = "INVICTA_URL")]
    url: Option<String>,
    /// The API key (`inv_…`) [default: the profile's]
    #[arg(long, global = true, env = "INVICTA_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The profile to use instead of the current one (see `invicta profile`)
    #[arg(long, global = true, env = "INVICTA_PROFILE")]
    profile: Option<String>,
    /// Print the API's JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ComponentCommand {
    /// Upload a component, a .wasm or a tar archive of component.wasm and files/ (a new
    /// version if the bytes are new)
    Add { name: String, file: PathBuf },
    /// List your components with their latest versions
    List,
    /// Show a component's latest version, its exports and its versions
    Show { name: String },
    /// Delete a component and all its versions (refused while workers use it)
    Delete { name: String },
    /// Show or set when the component's workers are snapshotted (if it exports
    /// invicta:host/snapshot): every N invocations, M oplog entries or B bytes of oplog
    Snapshots {
        name: String,
        /// Every this many invocations (0: not by count)
        #[arg(long, value_name = "N", conflicts_with = "unset")]
        every_invocations: Option<u64>,
        /// Every this many oplog entries (0: not by entries)
        #[arg(long, value_name = "M", conflicts_with = "unset")]
        every_entries: Option<u64>,
        /// Every this many bytes of oplog (0: not by size)
        #[arg(long, value_name = "B", conflicts_with = "unset")]
        every_oplog_bytes: Option<u64>,
        /// Remove the component's own policy: the server's default applies
        #[arg(long)]
        unset: bool,
    },
    /// Move every worker of a component to a version (each by replay if its history replays
    /// there, else by a snapshot when both versions export invicta:host/snapshot)
    Update {
        name: String,
        #[arg(long)]
        version: u64,
        /// Only say what would happen to each worker, and how
        #[arg(long)]
        dry_run: bool,
        /// `auto`, `replay` or `snapshot`
        #[arg(long, default_value = "auto", value_parser = ["auto", "replay", "snapshot"])]
        method: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkerCommand {
    /// Create a worker (of the component's latest version, unless --version says otherwise)
    New {
        component: String,
        name: String,
        /// The component version to run
        #[arg(long)]
        version: Option<u64>,
        /// Environment variables, as KEY=VALUE
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Arguments
        #[arg(long = "arg")]
        args: Vec<String>,
    },
    /// List a component's workers (every page, unless --limit is given)
    List {
        component: String,
        /// Only workers in this status: active, suspended or failed
        #[arg(long)]
        status: Option<String>,
        /// Only workers whose names start with this
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many (one page)
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show a worker's status
    Show { component: String, name: String },
    /// List a directory of a worker's files, or print a file's bytes to stdout
    Files {
        component: String,
        name: String,
        /// A path under the worker's `/` (its root if absent)
        path: Option<String>,
    },
    /// Invoke a function and wait for its result: each argument is one parameter, as JSON
    /// (`5`, `'"text"'`, `'{"a":1}'`) or, with --wave, as WAVE text (`5`, `'"text"'`, `'{a: 1}'`)
    Invoke {
        component: String,
        name: String,
        function: String,
        #[arg(allow_negative_numbers = true)]
        params: Vec<String>,
        /// The same key never runs twice
        #[arg(long)]
        idempotency_key: Option<String>,
        /// The parameters are WAVE text, not JSON
        #[arg(long)]
        wave: bool,
    },
    /// Accept an invocation durably and return at once with its idempotency key (see `result`)
    Enqueue {
        component: String,
        name: String,
        function: String,
        #[arg(allow_negative_numbers = true)]
        params: Vec<String>,
        /// The same key is accepted once
        #[arg(long)]
        idempotency_key: Option<String>,
        /// The parameters are WAVE text, not JSON
        #[arg(long)]
        wave: bool,
        /// Run it this many milliseconds from now, not at once
        #[arg(long)]
        in_ms: Option<u64>,
        /// Run a failed run again, up to this many runs in all
        #[arg(long, value_name = "RUNS")]
        retry_attempts: Option<u32>,
        /// The wait before the second run, in ms, doubled before each next one
        #[arg(long, value_name = "MS", requires = "retry_attempts")]
        retry_backoff_ms: Option<u64>,
        /// The failure codes retried (timeout, trap, out_of_fuel, out_of_memory; default timeout)
        #[arg(long, value_name = "CODE", requires = "retry_attempts")]
        retry_on: Vec<String>,
    },
    /// Recurring invocations on a worker, by cron expression
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Show an invocation's status and result by its idempotency key
    Result {
        component: String,
        name: String,
        /// What `enqueue` printed, or the key given to `invoke`
        idempotency_key: String,
        /// Wait up to this many milliseconds for a pending invocation to finish
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
    },
    /// Print what the worker wrote to stdout and stderr
    Logs {
        component: String,
        name: String,
        /// Keep printing new lines as they come (reconnecting if the server restarts)
        #[arg(long, short)]
        follow: bool,
        /// Start at this oplog index
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Stop the worker's running invocation (it fails with `interrupted`; the worker stays usable)
    Interrupt { component: String, name: String },
    /// Load the worker now, replaying its oplog (and retry a replay that failed)
    Resume { component: String, name: String },
    /// Make a new worker with this one's history (up to an entry), then its own
    Fork {
        component: String,
        name: String,
        /// The new worker's name
        new_name: String,
        /// Fork after this oplog entry (one that ends an invocation; default: the last)
        #[arg(long)]
        at: Option<u64>,
    },
    /// Take the worker back to an earlier state: the later oplog entries stay, skipped by replay
    Revert {
        component: String,
        name: String,
        /// To its state after this oplog entry (one that ends an invocation)
        #[arg(long, conflicts_with = "last", required_unless_present = "last")]
        to: Option<u64>,
        /// To its state before its last this many invocations
        #[arg(long)]
        last: Option<u32>,
    },
    /// Move the worker to another version of its component: by replay if its history replays
    /// there, else by a snapshot when both versions export invicta:host/snapshot
    Update {
        component: String,
        name: String,
        #[arg(long)]
        version: u64,
        /// Only say what the move would do, and how
        #[arg(long)]
        dry_run: bool,
        /// `auto`, `replay` or `snapshot`
        #[arg(long, default_value = "auto", value_parser = ["auto", "replay", "snapshot"])]
        method: String,
    },
    /// Delete the worker with its oplog and its queued invocations
    Delete { component: String, name: String },
    /// Show a worker's oplog
    Oplog {
        component: String,
        name: String,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        count: u64,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Invoke FUNCTION with PARAMS (JSON) at every tick of CRON: six fields, seconds first, UTC
    Add {
        component: String,
        name: String,
        /// e.g. `*/10 * * * * *` (every ten seconds) or `0 0 3 * * *` (03:00 every day)
        #[arg(long)]
        cron: String,
        function: String,
        #[arg(allow_negative_numbers = true)]
        params: Vec<String>,
    },
    /// List the worker's schedules
    List { component: String, name: String },
    /// Stop firing until resumed
    Pause {
        component: String,
        name: String,
        id: String,
    },
    /// Fire again, from the next tick after now
    Resume {
        component: String,
        name: String,
        id: String,
    },
    /// Delete a schedule
    Delete {
        component: String,
        name: String,
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Set a value workers read through `wasi:config/store` (the component's, or one worker's)
    Set {
        component: String,
        /// The key to set
        #[arg(value_name = "KEY")]
        entry: String,
        value: String,
        /// Only this worker sees it, over the component's
        #[arg(long)]
        worker: Option<String>,
        /// Sealed at rest, never shown again, never in an oplog in clear
        #[arg(long)]
        secret: bool,
    },
    /// List the component's (or one worker's own) values; secrets without theirs
    List {
        component: String,
        #[arg(long)]
        worker: Option<String>,
    },
    /// Remove a value
    Unset {
        component: String,
        #[arg(value_name = "KEY")]
        entry: String,
        #[arg(long)]
        worker: Option<String>,
    },
}

/// Where a component's (or a worker's) configuration is, in the API.
fn config_path(component: &str, worker: Option<&str>) -> String {
    match worker {
        Some(worker) => format!("/v1/components/{component}/workers/{worker}/config"),
        None => format!("/v1/components/{component}/config"),
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum RouteCommand {
    /// Put a handler component or a worker's function behind a URL on the public listener
    Create(Box<NewRoute>),
    /// List your routes
    List,
    /// A route, with what it served this month
    Get { name: String },
    /// Stop serving a route
    Delete { name: String },
}

/// A new route, as `invicta route create` takes it.
#[derive(Debug, clap::Args)]
pub struct NewRoute {
    name: String,
    /// The path: literal segments and parameters, e.g. `/hello/{name}` or `/files/{*path}`
    #[arg(long)]
    path: String,
    /// A host you claim (no other tenant may route it); without one the route is served
    /// under your tenant's prefix, `/{tenant}{path}`
    #[arg(long)]
    host: Option<String>,
    /// A method the route answers (repeat for several; none: every method)
    #[arg(long = "method")]
    methods: Vec<String>,
    /// Serve a component exporting `wasi:http/incoming-handler`, a fresh instance per request
    #[arg(long, conflicts_with = "function")]
    handler: Option<String>,
    /// Call COMPONENT's FUNCTION (`COMPONENT:FUNCTION`) and answer its result as JSON
    #[arg(long, requires = "worker")]
    function: Option<String>,
    /// Where the worker's name comes from: `path:NAME`, `query:NAME`, `header:NAME` or
    /// `fixed:WORKER`
    #[arg(long)]
    worker: Option<String>,
    /// Where each parameter comes from, in order: `path:NAME`, `query:NAME`,
    /// `header:NAME`, `body` (the JSON body), `body:/json/pointer` or `value:JSON`
    #[arg(long = "param")]
    params: Vec<String>,
    /// Who may call: `public` (default), `key` (a key of your tenant with the invoke scope)
    /// or `secret:HEADER=VALUE`
    #[arg(long, default_value = "public")]
    auth: String,
    /// An origin browsers may call from (repeat for several; `*` for any)
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// The largest request body, in bytes
    #[arg(long)]
    body_max: Option<u64>,
}

/// A value source of a route, from its command-line form.
fn route_source(text: &str) -> Result<Value, Failure> {
    let bad = || {
        Failure::Usage(format!(
            "`{text}`: give path:NAME, query:NAME, header:NAME, fixed:NAME, body, body:/POINTER or value:JSON"
        ))
    };
    let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
    Ok(match kind {
        "path" => json!({ "from": "path", "name": rest }),
        "query" => json!({ "from": "query", "name": rest }),
        "header" => json!({ "from": "header", "name": rest }),
        "fixed" => json!({ "from": "value", "value": rest }),
        "body" if rest.is_empty() => json!({ "from": "body" }),
        "body" => json!({ "from": "body", "pointer": rest }),
        "value" => {
            json!({ "from": "value", "value": serde_json::from_str::<Value>(rest).map_err(|_| bad())? })
        }
        _ => return Err(bad()),
    })
}

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create a key for your tenant (the secret is shown once)
    Create {
        /// admin, deploy, invoke, read (repeat for several)
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List your tenant's keys (never their secrets)
    List,
    /// Revoke a key by its id
    Revoke { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Tenants (operator key)
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Plans (operator key)
    #[command(subcommand)]
    Plan(PlanCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum PlanCommand {
    /// List the plans
    List,
    /// Show a plan, as JSON (the form `put` takes)
    Show { name: String },
    /// Create or replace a plan from a JSON file (see `show` for its fields)
    Put { name: String, file: PathBuf },
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantCommand {
    /// Create a tenant
    Create {
        name: String,
        #[arg(long)]
        plan: Option<String>,
        /// Also give it a key with every scope, and print it (once)
        #[arg(long)]
        with_key: bool,
    },
    /// List tenants
    List,
    /// Give a tenant a key (the secret is shown once)
    Key {
        tenant: String,
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Move a tenant to another plan
    Plan { tenant: String, plan: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// Save a profile, the --url and --key given (or INVICTA_URL and INVICTA_API_KEY), and
    /// make it the current one
    Set { name: String },
    /// Make a saved profile the current one
    Use { name: String },
    /// List the saved profiles
    List,
    /// Forget a profile
    Delete { name: String },
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

impl Client {
    fn new(connection: &Connection) -> Result<Client, Failure> {
        let profile = crate::profile::Profiles::load()
            .and_then(|p| p.select(connection.profile.as_deref()))
            .map_err(Failure::Usage)?;
        let url = connection
            .url
            .clone()
            .or(profile.url)
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "the URL must start with http:// or https://, got `{url}`"
            )));
        }
        // No overall timeout: long polls and log streams last; connecting does not.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Failure::Network(e.to_string()))?;
        Ok(Client {
            base: url.trim_end_matches('/').to_string(),
            key: connection.key.clone().or(profile.key),
            http,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), Failure> {
        match self.exchange(request, true).await? {
            (status, Ok(body)) => Ok((status, body)),
            (status, Err(_)) => Ok((status, Value::Null)),
        }
    }

    /// Sends `request` with the key; a problem (4xx, 5xx) is an error. The body is JSON when
    /// `json` (or the response says so), else its bytes.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        json: bool,
    ) -> Result<(u16, Result<Value, Vec<u8>>), Failure> {
        let request = match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Network(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let says_json = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Network(e.to_string()))?;
        if status == 204 {
            return Ok((status, Ok(Value::Null)));
        }
        if !(json || says_json || status >= 400) {
            return Ok((status, Err(bytes.to_vec())));
        }
        let body: Value = serde_json::from_slice(&bytes).map_err(|_| {
            Failure::Network(format!(
                "{} answered {status} with something that is not JSON",
                self.base
            ))
        })?;
        if status >= 400 {
            return Err(Failure::Api(status, body));
        }
        Ok((status, Ok(body)))
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .1)
    }

    /// `GET path`, answering JSON as JSON and anything else as its bytes.
    async fn get_any(&self, path: &str) -> Result<Result<Value, Vec<u8>>, Failure> {
        let request = self.http.get(format!("{}{path}", self.base));
        Ok(self.exchange(request, false).await?.1)
    }

    async fn post(
        &self,
        path: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, Failure> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        Ok(self.send(request).await?.1)
    }

    async fn put(&self, path: &str, body: Value) -> Result<Value, Failure> {
        let request = self
            .http
            .put(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        Ok(self.send(request).await?.1)
    }

    async fn delete(&self, path: &str) -> Result<Value, Failure> {
        Ok(self
            .send(self.http.delete(format!("{}{path}", self.base)))
            .await?
            .1)
    }
}

/// A client subcommand.
pub enum Request {
    Component(ComponentCommand),
    Worker(WorkerCommand),
    Key(KeyCommand),
    Route(RouteCommand),
    Config(ConfigCommand),
    Usage,
    Admin(AdminCommand),
    Profile(ProfileCommand),
}

/// Runs a client subcommand and returns the process's exit code.
pub fn main(connection: Connection, request: Request) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::from(EXIT_NETWORK);
        }
    };
    match runtime.block_on(run(&connection, request)) {
        Ok(output) => {
            print_output(&output, connection.json);
            ExitCode::SUCCESS
        }
        Err(Failure::Api(status, problem)) => {
            if connection.json {
                println!("{problem}");
            } else {
                let code = problem["code"].as_str().unwrap_or("error");
                let detail = problem["detail"].as_str().unwrap_or("");
                eprintln!("error: {code} ({status}): {detail}");
            }
            ExitCode::from(EXIT_API)
        }
        Err(Failure::Network(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_NETWORK)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn print_output(output: &Output, as_json: bool) {
    match output {
        Output::Nothing => {}
        Output::Table(json, _, _) | Output::Text(json, _) if as_json => println!("{json}"),
        Output::Text(_, text) => println!("{text}"),
        Output::Table(_, header, rows) => {
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for row in rows {
                for (i, cell) in row.iter().enumerate() {
                    if let Some(w) = widths.get_mut(i) {
                        *w = (*w).max(cell.chars().count());
                    }
                }
            }
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0))
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            println!(
                "{}",
                line(header.iter().map(|h| h.to_uppercase()).collect())
            );
            for row in rows {
                println!("{}", line(row.clone()));
            }
        }
    }
}

fn text_of(value: &Value) -> String {
    text(value)
}

/// A plan limit: `null` means none.
fn limit(value: &Value) -> String {
    match value {
        Value::Null => "no limit".into(),
        other => text(other),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Parameters as the invoke and enqueue bodies take them: JSON values, or WAVE strings.
fn invocation_body(function: &str, params: &[String], wave: bool) -> Result<Value, Failure> {
    if wave {
        return Ok(json!({ "function": function, "wave": params }));
    }
    let params = params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::from_str::<Value>(p).map_err(|e| {
                Failure::Usage(format!(
                    "parameter {} is not JSON ({e}): {p} (use --wave for WAVE text)",
                    i + 1
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "function": function, "params": params }))
}

/// Uploads `file`, showing a progress bar on a terminal for files over a megabyte.
async fn upload(
    client: &Client,
    name: &str,
    file: &std::path::Path,
) -> Result<(u16, Value), Failure> {
    let bytes =
        std::fs::read(file).map_err(|e| Failure::Usage(format!("read {}: {e}", file.display())))?;
    let total = bytes.len() as u64;
    let bar = if total > 1024 * 1024 && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "uploading {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let chunks: Vec<Vec<u8>> = bytes.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks.into_iter().map(move |chunk| {
        if let Some(bar) = &progress {
            bar.inc(chunk.len() as u64);
        }
        Ok::<_, std::io::Error>(chunk)
    }));
    let request = client
        .http
        .post(format!("{}/v1/components/{name}", client.base))
        // A tar archive carries the component and its files.
        .header(
            "content-type",
            if bytes.get(257..262) == Some(b"ustar".as_slice()) {
                "application/x-tar"
            } else {
                "application/wasm"
            },
        )
        .header("content-length", total)
        // Answered once the bytes are in; the compile is followed below.
        .header("prefer", "respond-async")
        .body(reqwest::Body::wrap_stream(stream));
    let result = client.send(request).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (status, body) = result?;
    if status != 202 {
        return Ok((status, body));
    }
    let id = body["upload"].as_str().unwrap_or_default().to_string();
    let spinner = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_message("compiling");
        spinner
    });
    let outcome = loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let job = client
            .get(&format!("/v1/components/{name}/uploads/{id}"))
            .await?;
        match job["status"].as_str() {
            Some("ready") => {
                let status = if job["created"] == Value::Bool(true) {
                    201
                } else {
                    200
                };
                break Ok((status, job["version"].clone()));
            }
            Some("failed") => {
                let problem = job["problem"].clone();
                let status = problem["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(500);
                break Err(Failure::Api(status, problem));
            }
            _ => {
                if let Some(spinner) = &spinner {
                    spinner.set_message(format!(
                        "compiling… {:.1} s",
                        job["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
                    ));
                    spinner.tick();
                }
            }
        }
    };
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    outcome
}

async fn run(connection: &Connection, request: Request) -> Result<Output, Failure> {
    if let Request::Profile(command) = request {
        return profile(command, connection);
    }
    let client = Client::new(connection)?;
    match request {
        Request::Profile(_) => Err(Failure::Usage("unreachable".into())),
        Request::Component(ComponentCommand::Add { name, file }) => {
            let (status, body) = upload(&client, &name, &file).await?;
            let verb = if status == 201 {
                "uploaded"
            } else {
                "already there:"
            };
            let text = format!(
                "{verb} {} version {} ({} bytes, {} exports)",
                text(&body["name"]),
                body["version"],
                body["size"],
                body["exports"].as_array().map_or(0, Vec::len)
            );
            Ok(Output::Text(body, text))
        }
        Request::Component(ComponentCommand::List) => {
            let body = client.get("/v1/components").await?;
            let rows = body["components"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            vec![
                                text(&c["name"]),
                                text(&c["version"]),
                                text(&c["size"]),
                                c["exports"].as_array().map_or(0, Vec::len).to_string(),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Output::Table(
                body,
                vec!["component", "version", "bytes", "exports"],
                rows,
            ))
        }
        Request::Component(ComponentCommand::Update {
            name,
            version,
            dry_run,
            method,
        }) => {
            let mut rows = Vec::new();
            let mut results = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut request =
                    json!({ "version": version, "dry_run": dry_run, "method": method });
                if let Some(after) = &after {
                    request["after"] = json!(after);
                }
                let page = client
                    .post(&format!("/v1/components/{name}/update"), request, None)
                    .await?;
                for result in page["results"].as_array().cloned().unwrap_or_default() {
                    rows.push(vec![
                        text(&result["worker"]),
                        text(&result["outcome"]),
                        text(&result["method"]),
                        text(&result["reason"]),
                    ]);
                    results.push(result);
                }
                // Progress, apart from the result (stdout stays the table or the JSON).
                eprintln!("{} worker(s) done", rows.len());
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
            Ok(Output::Table(
                json!({ "results": results }),
                vec!["worker", "outcome", "method", "reason"],
                rows,
            ))
        }
        Request::Component(ComponentCommand::Snapshots {
            name,
            every_invocations,
            every_entries,
            every_oplog_bytes,
            unset,
        }) => {
            let path = format!("/v1/components/{name}/snapshots");
            if unset {
                let body = client.delete(&path).await?;
                return Ok(Output::Text(
                    body,
                    format!("{name}: the server's default snapshot policy applies"),
                ));
            }
            let body = if every_invocations.is_none()
                && every_entries.is_none()
                && every_oplog_bytes.is_none()
            {
                client.get(&path).await?
            } else {
                let policy = json!({
                    "every_invocations": every_invocations.unwrap_or(0),
                    "every_entries": every_entries.unwrap_or(0),
                    "every_oplog_bytes": every_oplog_bytes.unwrap_or(0),
                });
                client.put(&path, policy).await?
            };
            let text = format!(
                "{name}: a snapshot every {} invocations, {} entries or {} bytes of oplog (0: not by that)",
                text(&body["every_invocations"]),
                text(&body["every_entries"]),
                text(&body["every_oplog_bytes"])
            );
            Ok(Output::Text(body, text))
        }
        Request::Component(ComponentCommand::Delete { name }) => {
            let body = client.delete(&format!("/v1/components/{name}")).await?;
            Ok(Output::Text(body, format!("deleted component {name}")))
        }
        Request::Component(ComponentCommand::Show { name }) => {
            let body = client.get(&format!("/v1/components/{name}")).await?;
            let rows = body["exports"]
                .as_array()
                .map(|exports| {
                    exports
                        .iter()
                        .map(|e| {
                            let params = e["params"]
                                .as_array()
                                .map(|ps| {
                                    ps.iter()
                                        .map(|p| {
                                            format!("{}: {}", text(&p["name"]), text(&p["type"]))
                                        })
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                })
                                .unwrap_or_default();
                            vec![text(&e["name"]), params, text(&e["result"])]
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Output::Table(
                body,
                vec!["function", "params", "result"],
                rows,
            ))
        }
        Request::Worker(WorkerCommand::New {
            component,
            name,
            version,
            env,
            args,
        }) => {
            let env: serde_json::Map<String, Value> =
                env.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let mut request = json!({ "name": name, "env": env, "args": args });
            if let Some(version) = version {
                request["version"] = json!(version);
            }
            let body = client
                .post(
                    &format!("/v1/components/{component}/workers"),
                    request,
                    None,
                )
                .await?;
            let text = format!(
                "created worker {name} of {component} version {}",
                body["component_version"]
            );
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::List {
            component,
            status,
            prefix,
            limit,
        }) => {
            let mut query = vec![format!("limit={}", limit.unwrap_or(1_000))];
            if let Some(status) = status {
                query.push(format!("status={}", encode(&status)));
            }
            if let Some(prefix) = prefix {
                query.push(format!("prefix={}", encode(&prefix)));
            }
            let mut workers = Vec::new();
            let mut cursor: Option<String> = None;
            let next = loop {
                let mut q = query.clone();
                if let Some(c) = &cursor {
                    q.push(format!("cursor={}", encode(c)));
                }
                let page = client
                    .get(&format!(
                        "/v1/components/{component}/workers?{}",
                        q.join("&")
                    ))
                    .await?;
                workers.extend(page["workers"].as_array().cloned().unwrap_or_default());
                cursor = page["next"].as_str().map(str::to_string);
                if cursor.is_none() || limit.is_some() {
                    break cursor;
                }
            };
            let rows = workers
                .iter()
                .map(|w| {
                    vec![
                        text(&w["name"]),
                        text(&w["status"]),
                        text(&w["component_version"]),
                    ]
                })
                .collect();
            let body = json!({ "workers": workers, "next": next });
            Ok(Output::Table(
                body,
                vec!["worker", "status", "version"],
                rows,
            ))
        }
        Request::Worker(WorkerCommand::Enqueue {
            component,
            name,
            function,
            params,
            idempotency_key,
            wave,
            in_ms,
            retry_attempts,
            retry_backoff_ms,
            retry_on,
        }) => {
            let mut request = invocation_body(&function, &params, wave)?;
            if let Some(attempts) = retry_attempts {
                let mut retry = json!({ "max_attempts": attempts });
                if let Some(backoff) = retry_backoff_ms {
                    retry["backoff_min_ms"] = json!(backoff);
                    retry["backoff_max_ms"] = json!(backoff.saturating_mul(64).max(60_000));
                }
                if !retry_on.is_empty() {
                    retry["on"] = json!(retry_on);
                }
                request["retry"] = retry;
            }
            if let Some(delay) = in_ms {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                request["schedule_at"] = json!(now + delay);
            }
            let body = client
                .post(
                    &format!("/v1/components/{component}/workers/{name}/enqueue"),
                    request,
                    idempotency_key.as_deref(),
                )
                .await?;
            let text = format!(
                "{} {}",
                if body["accepted"] == true {
                    "accepted"
                } else {
                    "already accepted:"
                },
                text(&body["idempotency_key"])
            );
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::Result {
            component,
            name,
            idempotency_key: key,
            wait_ms,
        }) => {
            let body = client
                .get(&format!(
                    "/v1/components/{component}/workers/{name}/invocations/{}?wait_ms={wait_ms}",
                    encode(&key)
                ))
                .await?;
            let text = match body["status"].as_str() {
                Some("completed") => body["result"].to_string(),
                Some("failed") => format!(
                    "failed: {}: {}",
                    text(&body["error"]["code"]),
                    text(&body["error"]["message"])
                ),
                _ => "pending".to_string(),
            };
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::Logs {
            component,
            name,
            follow,
            from,
        }) => {
            let path = format!("/v1/components/{component}/workers/{name}/logs");
            if follow {
                return crate::follow::follow(&client, &path, from, connection.json).await;
            }
            let mut lines = Vec::new();
            let mut from = from;
            loop {
                let page = client.get(&format!("{path}?from={from}")).await?;
                let got = page["lines"].as_array().cloned().unwrap_or_default();
                let next = page["next"].as_u64().unwrap_or(from);
                lines.extend(got);
                if next == from {
                    break;
                }
                from = next;
            }
            let text = lines.iter().map(|l| text(&l["text"])).collect::<String>();
            let text = text.strip_suffix('\n').unwrap_or(&text).to_string();
            Ok(Output::Text(json!({ "lines": lines, "next": from }), text))
        }
        Request::Worker(WorkerCommand::Schedule(command)) => schedule(&client, command).await,
        Request::Worker(WorkerCommand::Fork {
            component,
            name,
            new_name,
            at,
        }) => {
            let mut request = json!({ "name": new_name });
            if let Some(at) = at {
                request["at"] = json!(at);
            }
            let body = client
                .post(
                    &format!("/v1/components/{component}/workers/{name}/fork"),
                    request,
                    None,
                )
                .await?;
            let text = format!(
                "forked {name} into {new_name} after oplog entry {}",
                text(&body["forked_at"])
            );
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::Revert {
            component,
            name,
            to,
            last,
        }) => {
            let request = match (to, last) {
                (Some(to), _) => json!({ "to": to }),
                (None, last) => json!({ "last_invocations": last }),
            };
            let body = client
                .post(
                    &format!("/v1/components/{component}/workers/{name}/revert"),
                    request,
                    None,
                )
                .await?;
            let text = format!(
                "reverted {name}: oplog entries {} to {} are skipped",
                text(&body["skipped_from"]),
                text(&body["skipped_to"])
            );
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::Interrupt { component, name }) => {
            let body = client
                .post(
                    &format!("/v1/components/{component}/workers/{name}/interrupt"),
                    json!({}),
                    None,
                )
                .await?;
            let text = if body["interrupted"] == true {
                format!("interrupted the running invocation of {name}")
            } else {
                format!("{name} was not running an invocation")
            };
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::Resume { component, name }) => {
            let body = client
                .post(
                    &format!("/v1/components/{component}/workers/{name}/resume"),
                    json!({}),
                    None,
                )
                .await?;
            let text = format!("{name} is {}", text(&body["status"]));
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::Update {
            component,
            name,
            version,
            dry_run,
            method,
        }) => {
            let body = client
                .put(
                    &format!("/v1/components/{component}/workers/{name}/version"),
                    json!({ "version": version, "dry_run": dry_run, "method": method }),
                )
                .await?;
            let text = if dry_run {
                format!("{}: {}", text(&body["method"]), text(&body["detail"]))
            } else {
                format!("{name} runs version {}", text(&body["component_version"]))
            };
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::Delete { component, name }) => {
            let body = client
                .delete(&format!("/v1/components/{component}/workers/{name}"))
                .await?;
            Ok(Output::Text(body, format!("deleted worker {name}")))
        }
        Request::Worker(WorkerCommand::Files {
            component,
            name,
            path,
        }) => {
            let path = path.unwrap_or_default();
            let rest = path.trim_matches('/');
            let at = if rest.is_empty() {
                format!("/v1/components/{component}/workers/{name}/files")
            } else {
                format!("/v1/components/{component}/workers/{name}/files/{rest}")
            };
            match client.get_any(&at).await? {
                Ok(body) => {
                    let rows = body["entries"]
                        .as_array()
                        .map(|entries| {
                            entries
                                .iter()
                                .map(|e| {
                                    vec![
                                        text(&e["name"]),
                                        text(&e["kind"]),
                                        text(&e["size"]),
                                        if e["read_only"] == Value::Bool(true) {
                                            "read-only".into()
                                        } else {
                                            String::new()
                                        },
                                    ]
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok(Output::Table(body, vec!["name", "kind", "size", ""], rows))
                }
                Err(bytes) => {
                    use std::io::Write;
                    std::io::stdout()
                        .write_all(&bytes)
                        .map_err(|e| Failure::Usage(format!("write to stdout: {e}")))?;
                    Ok(Output::Nothing)
                }
            }
        }
        Request::Worker(WorkerCommand::Show { component, name }) => {
            let body = client
                .get(&format!("/v1/components/{component}/workers/{name}"))
                .await?;
            let rows = vec![vec![
                name,
                text(&body["status"]),
                text(&body["component_version"]),
                text(&body["oplog_length"]),
                text(&body["pending_invocations"]),
            ]];
            Ok(Output::Table(
                body,
                vec!["worker", "status", "version", "oplog", "pending"],
                rows,
            ))
        }
        Request::Worker(WorkerCommand::Invoke {
            component,
            name,
            function,
            params,
            idempotency_key,
            wave,
        }) => {
            let body = client
                .post(
                    &format!("/v1/components/{component}/workers/{name}/invoke"),
                    invocation_body(&function, &params, wave)?,
                    idempotency_key.as_deref(),
                )
                .await?;
            let text = body["result"].to_string();
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::Oplog {
            component,
            name,
            from,
            count,
        }) => {
            let body = client
                .get(&format!(
                    "/v1/components/{component}/workers/{name}/oplog?from={from}&count={count}"
                ))
                .await?;
            let rows = body["entries"]
                .as_array()
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| {
                            let mut details = e.clone();
                            if let Some(map) = details.as_object_mut() {
                                map.remove("index");
                                map.remove("kind");
                            }
                            vec![text(&e["index"]), text(&e["kind"]), details.to_string()]
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Output::Table(body, vec!["index", "kind", "details"], rows))
        }
        Request::Key(KeyCommand::Create {
            scopes,
            description,
        }) => {
            let body = client
                .post(
                    "/v1/keys",
                    json!({ "scopes": scopes, "description": description }),
                    None,
                )
                .await?;
            let text = format!(
                "key {} (shown once): {}",
                text(&body["id"]),
                text(&body["key"])
            );
            Ok(Output::Text(body, text))
        }
        Request::Route(RouteCommand::Create(new)) => {
            let NewRoute {
                name,
                path,
                host,
                methods,
                handler,
                function,
                worker,
                params,
                auth,
                cors_origins,
                body_max,
            } = *new;
            let target = match (handler, function) {
                (Some(component), None) => match worker.as_deref() {
                    None => json!({ "kind": "handler", "component": component }),
                    Some(worker) => json!({ "kind": "handler", "component": component,
                                            "worker": route_source(worker)? }),
                },
                (None, Some(function)) => {
                    let (component, function) = function
                        .split_once(':')
                        .ok_or_else(|| Failure::Usage("--function is COMPONENT:FUNCTION".into()))?;
                    let worker = route_source(worker.as_deref().unwrap_or_default())?;
                    let params = params
                        .iter()
                        .map(|p| route_source(p))
                        .collect::<Result<Vec<_>, _>>()?;
                    json!({ "kind": "function", "component": component, "function": function,
                            "worker": worker, "params": params })
                }
                _ => {
                    return Err(Failure::Usage(
                        "give --handler COMPONENT or --function COMPONENT:FUNCTION".into(),
                    ));
                }
            };
            let auth = match auth.as_str() {
                "public" => json!({ "kind": "public" }),
                "key" => json!({ "kind": "key" }),
                other => match other
                    .strip_prefix("secret:")
                    .and_then(|rest| rest.split_once('='))
                {
                    Some((header, secret)) => {
                        json!({ "kind": "secret", "header": header, "secret": secret })
                    }
                    None => {
                        return Err(Failure::Usage(
                            "--auth is public, key or secret:HEADER=VALUE".into(),
                        ));
                    }
                },
            };
            let mut spec =
                json!({ "path": path, "methods": methods, "target": target, "auth": auth });
            if let Some(host) = host {
                spec["host"] = json!(host);
            }
            if !cors_origins.is_empty() {
                spec["cors"] = json!({ "origins": cors_origins });
            }
            if let Some(max) = body_max {
                spec["body_bytes_max"] = json!(max);
            }
            let body = client
                .post(&format!("/v1/routes/{name}"), spec, None)
                .await?;
            let text = format!(
                "route {} serves {}",
                text(&body["name"]),
                text(&body["url_path"])
            );
            Ok(Output::Text(body, text))
        }
        Request::Config(ConfigCommand::Set {
            component,
            entry: key,
            value,
            worker,
            secret,
        }) => {
            let path = format!("{}/{key}", config_path(&component, worker.as_deref()));
            let body = client
                .put(&path, json!({ "value": value, "secret": secret }))
                .await?;
            let what = if secret { "secret" } else { "value" };
            Ok(Output::Text(body, format!("{what} {key} set")))
        }
        Request::Config(ConfigCommand::List { component, worker }) => {
            let body = client
                .get(&config_path(&component, worker.as_deref()))
                .await?;
            let rows = body["entries"]
                .as_array()
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| {
                            let value = if e["secret"] == json!(true) {
                                "(secret)".to_string()
                            } else {
                                text(&e["value"])
                            };
                            vec![text(&e["key"]), value, text(&e["scope"])]
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Output::Table(body, vec!["key", "value", "scope"], rows))
        }
        Request::Config(ConfigCommand::Unset {
            component,
            entry: key,
            worker,
        }) => {
            let path = format!("{}/{key}", config_path(&component, worker.as_deref()));
            let body = client.delete(&path).await?;
            Ok(Output::Text(body, format!("{key} removed")))
        }
        Request::Route(RouteCommand::List) => {
            let body = client.get("/v1/routes").await?;
            let rows = body["routes"]
                .as_array()
                .map(|routes| {
                    routes
                        .iter()
                        .map(|r| {
                            let target = &r["target"];
                            let what = match target["kind"].as_str() {
                                Some("handler") => {
                                    format!("handler {}", text(&target["component"]))
                                }
                                _ => format!(
                                    "{}:{}",
                                    text(&target["component"]),
                                    text(&target["function"])
                                ),
                            };
                            vec![
                                text(&r["name"]),
                                text(&r["url_path"]),
                                what,
                                text(&r["auth"]["kind"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Output::Table(
                body,
                vec!["name", "url", "target", "auth"],
                rows,
            ))
        }
        Request::Route(RouteCommand::Get { name }) => {
            let body = client.get(&format!("/v1/routes/{name}")).await?;
            let text = serde_json::to_string_pretty(&body).unwrap_or_default();
            Ok(Output::Text(body, text))
        }
        Request::Route(RouteCommand::Delete { name }) => {
            let body = client.delete(&format!("/v1/routes/{name}")).await?;
            Ok(Output::Text(body, format!("route {name} deleted")))
        }
        Request::Key(KeyCommand::List) => {
            let body = client.get("/v1/keys").await?;
            Ok(key_table(body))
        }
        Request::Key(KeyCommand::Revoke { id }) => {
            let body = client.delete(&format!("/v1/keys/{id}")).await?;
            let text = format!("revoked key {}", text(&body["id"]));
            Ok(Output::Text(body, text))
        }
        Request::Usage => {
            let body = client.get("/v1/usage").await?;
            let plan = &body["plan"];
            let rows = vec![
                vec![
                    "fuel".into(),
                    text(&body["fuel"]),
                    limit(&plan["fuel_per_month"]),
                ],
                vec![
                    "invocations".into(),
                    text(&body["invocations"]),
                    String::new(),
                ],
                vec![
                    "workers".into(),
                    text(&body["workers"]),
                    limit(&plan["workers_max"]),
                ],
                vec![
                    "components".into(),
                    text(&body["components"]),
                    limit(&plan["components_max"]),
                ],
                vec![
                    "component bytes".into(),
                    text(&body["component_bytes"]),
                    limit(&plan["component_bytes_max"]),
                ],
            ];
            Ok(Output::Table(body, vec!["usage", "used", "limit"], rows))
        }
        Request::Admin(AdminCommand::Tenant(TenantCommand::Create {
            name,
            plan,
            with_key,
        })) => {
            let mut body = client
                .post(
                    "/v1/admin/tenants",
                    json!({ "name": name, "plan": plan }),
                    None,
                )
                .await?;
            let mut text = format!(
                "created tenant {} ({}) on plan {}",
                text(&body["id"]),
                name,
                text(&body["plan"])
            );
            if with_key {
                let key = client
                    .post(
                        &format!("/v1/admin/tenants/{}/keys", text_of(&body["id"])),
                        json!({ "scopes": ["admin", "deploy", "invoke", "read"], "description": "made with the tenant" }),
                        None,
                    )
                    .await?;
                text.push_str(&format!(
                    "\nits key, with every scope (shown once): {}",
                    text_of(&key["key"])
                ));
                body["key"] = key;
            }
            Ok(Output::Text(body, text))
        }
        Request::Admin(AdminCommand::Tenant(TenantCommand::List)) => {
            let body = client.get("/v1/admin/tenants").await?;
            let rows = body["tenants"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .map(|t| vec![text(&t["id"]), text(&t["name"]), text(&t["plan"])])
                        .collect()
                })
                .unwrap_or_default();
            Ok(Output::Table(body, vec!["id", "name", "plan"], rows))
        }
        Request::Admin(AdminCommand::Tenant(TenantCommand::Key { tenant, scopes })) => {
            let body = client
                .post(
                    &format!("/v1/admin/tenants/{tenant}/keys"),
                    json!({ "scopes": scopes }),
                    None,
                )
                .await?;
            let text = format!(
                "key {} for {tenant} (shown once): {}",
                text(&body["id"]),
                text(&body["key"])
            );
            Ok(Output::Text(body, text))
        }
        Request::Admin(AdminCommand::Tenant(TenantCommand::Plan { tenant, plan })) => {
            let body = client
                .put(
                    &format!("/v1/admin/tenants/{tenant}/plan"),
                    json!({ "plan": plan }),
                )
                .await?;
            let text = format!("tenant {tenant} is on plan {}", text(&body["plan"]));
            Ok(Output::Text(body, text))
        }
        Request::Admin(AdminCommand::Plan(PlanCommand::Show { name })) => {
            let body = client.get("/v1/admin/plans").await?;
            let plan = body["plans"]
                .as_array()
                .and_then(|plans| plans.iter().find(|p| p["name"] == name.as_str()).cloned())
                .ok_or_else(|| Failure::Usage(format!("no plan `{name}`")))?;
            let text = serde_json::to_string_pretty(&plan).unwrap_or_default();
            Ok(Output::Text(plan, text))
        }
        Request::Admin(AdminCommand::Plan(PlanCommand::Put { name, file })) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Usage(format!("read {}: {e}", file.display())))?;
            let plan: Value = serde_json::from_str(&text)
                .map_err(|e| Failure::Usage(format!("{} is not JSON: {e}", file.display())))?;
            let body = client.put(&format!("/v1/admin/plans/{name}"), plan).await?;
            Ok(Output::Text(body, format!("plan {name} saved")))
        }
        Request::Admin(AdminCommand::Plan(PlanCommand::List)) => {
            let body = client.get("/v1/admin/plans").await?;
            let rows = body["plans"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            vec![
                                text(&p["name"]),
                                text(&p["fuel_per_invocation"]),
                                limit(&p["fuel_per_month"]),
                                limit(&p["workers_max"]),
                                text(&p["requests_per_second"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Output::Table(
                body,
                vec![
                    "plan",
                    "fuel/invocation",
                    "fuel/month",
                    "workers",
                    "requests/s",
                ],
                rows,
            ))
        }
    }
}

fn key_table(body: Value) -> Output {
    let rows = body["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .map(|k| {
                    let scopes = k["scopes"]
                        .as_array()
                        .map(|s| s.iter().map(text).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    vec![
                        text(&k["id"]),
                        format!("{}…", text(&k["prefix"])),
                        scopes,
                        if k["revoked"] == true {
                            "revoked".into()
                        } else {
                            "active".into()
                        },
                        text(&k["description"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    Output::Table(
        body,
        vec!["id", "key", "scopes", "state", "description"],
        rows,
    )
}

/// Percent-encodes a query value or path segment.
pub(crate) fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn profile(command: ProfileCommand, connection: &Connection) -> Result<Output, Failure> {
    use crate::profile::{Profile, Profiles};
    let mut profiles = Profiles::load().map_err(Failure::Usage)?;
    match command {
        ProfileCommand::Set { name } => {
            let (url, key) = (connection.url.clone(), connection.key.clone());
            if url.is_none() && key.is_none() {
                return Err(Failure::Usage(
                    "give the profile a --url, a --key, or both".into(),
                ));
            }
            let entry = profiles
                .profiles
                .entry(name.clone())
                .or_insert_with(Profile::default);
            if url.is_some() {
                entry.url = url;
            }
            if key.is_some() {
                entry.key = key;
            }
            profiles.current = Some(name.clone());
            let path = profiles.save().map_err(Failure::Usage)?;
            Ok(Output::Text(
                json!({ "current": name, "path": path }),
                format!("profile {name} saved in {} and in use", path.display()),
            ))
        }
        ProfileCommand::Use { name } => {
            if !profiles.profiles.contains_key(&name) {
                return Err(Failure::Usage(format!(
                    "no profile `{name}` (see `invicta profile list`)"
                )));
            }
            profiles.current = Some(name.clone());
            profiles.save().map_err(Failure::Usage)?;
            Ok(Output::Text(
                json!({ "current": name }),
                format!("using profile {name}"),
            ))
        }
        ProfileCommand::Delete { name } => {
            if profiles.profiles.remove(&name).is_none() {
                return Err(Failure::Usage(format!("no profile `{name}`")));
            }
            if profiles.current.as_deref() == Some(name.as_str()) {
                profiles.current = None;
            }
            profiles.save().map_err(Failure::Usage)?;
            Ok(Output::Text(
                json!({ "deleted": name }),
                format!("deleted profile {name}"),
            ))
        }
        ProfileCommand::List => {
            let rows = profiles
                .profiles
                .iter()
                .map(|(name, p)| {
                    vec![
                        if profiles.current.as_deref() == Some(name.as_str()) {
                            format!("* {name}")
                        } else {
                            format!("  {name}")
                        },
                        p.url.clone().unwrap_or_default(),
                        // Never the secret: its public prefix is enough to tell keys apart.
                        p.key
                            .as_deref()
                            .map(|k| format!("{}…", k.chars().take(16).collect::<String>()))
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            let body = json!({
                "current": profiles.current,
                "profiles": profiles.profiles.iter().map(|(name, p)| json!({
                    "name": name,
                    "url": p.url,
                    "has_key": p.key.is_some(),
                })).collect::<Vec<_>>(),
            });
            Ok(Output::Table(body, vec!["profile", "url", "key"], rows))
        }
    }
}

fn schedule_table(body: Value, schedules: &[Value]) -> Output {
    let rows = schedules
        .iter()
        .map(|s| {
            vec![
                text(&s["id"]),
                text(&s["cron"]),
                text(&s["function"]),
                if s["paused"] == true {
                    "paused".into()
                } else {
                    "active".into()
                },
                text(&s["fired"]),
                text(&s["next_at_ms"]),
            ]
        })
        .collect();
    Output::Table(
        body,
        vec!["id", "cron", "function", "state", "fired", "next (ms)"],
        rows,
    )
}

/// Pauses or resumes (`verb`) a schedule under `base`.
async fn set_paused(client: &Client, base: &str, id: &str, verb: &str) -> Result<Output, Failure> {
    let body = client
        .post(&format!("{base}/{id}/{verb}"), json!({}), None)
        .await?;
    let rows = [body.clone()];
    Ok(schedule_table(body, &rows))
}

async fn schedule(client: &Client, command: ScheduleCommand) -> Result<Output, Failure> {
    let base = |component: &str, name: &str| {
        format!("/v1/components/{component}/workers/{name}/schedules")
    };
    match command {
        ScheduleCommand::Add {
            component,
            name,
            cron,
            function,
            params,
        } => {
            let mut request = invocation_body(&function, &params, false)?;
            request["cron"] = json!(cron);
            let body = client.post(&base(&component, &name), request, None).await?;
            let rows = [body.clone()];
            Ok(schedule_table(body, &rows))
        }
        ScheduleCommand::List { component, name } => {
            let body = client.get(&base(&component, &name)).await?;
            let rows = body["schedules"].as_array().cloned().unwrap_or_default();
            Ok(schedule_table(body, &rows))
        }
        ScheduleCommand::Pause {
            component,
            name,
            id,
        } => set_paused(client, &base(&component, &name), &id, "pause").await,
        ScheduleCommand::Resume {
            component,
            name,
            id,
        } => set_paused(client, &base(&component, &name), &id, "resume").await,
        ScheduleCommand::Delete {
            component,
            name,
            id,
        } => {
            let body = client
                .delete(&format!("{}/{id}", base(&component, &name)))
                .await?;
            Ok(Output::Text(body, format!("deleted schedule {id}")))
        }
    }
}
