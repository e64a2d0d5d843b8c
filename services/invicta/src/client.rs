//! The client subcommands: components, workers, keys, usage and the operator's tenants, over
//! the public API. Endpoint and key come from flags or `INVICTA_URL` / `INVICTA_API_KEY`;
//! output is a human table, or the API's JSON with `--json`.
//!
//! Exit codes: 0 success, 2 usage error (clap's), 3 the API refused (its problem is printed),
//! 4 the server could not be reached.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

/// The API answered with an error.
const EXIT_API: u8 = 3;
/// The server could not be reached, or answered with something that is not the API.
const EXIT_NETWORK: u8 = 4;

#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The server's URL
    #[arg(
        long,
        global = true,
        env = "INVICTA_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// The API key (`inv_…`)
    #[arg(long, global = true, env = "INVICTA_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Print the API's JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ComponentCommand {
    /// Upload a component (a new version if the bytes are new)
    Add { name: String, file: PathBuf },
    /// Show a component's latest version, its exports and its versions
    Show { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkerCommand {
    /// Create a worker of the component's latest version
    New {
        component: String,
        name: String,
        /// Environment variables, as KEY=VALUE
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Arguments
        #[arg(long = "arg")]
        args: Vec<String>,
    },
    /// List a component's workers
    List { component: String },
    /// Show a worker's status
    Show { component: String, name: String },
    /// Invoke a function: each argument is one parameter, as JSON (`5`, `'"text"'`, `'{"a":1}'`)
    Invoke {
        component: String,
        name: String,
        function: String,
        params: Vec<String>,
        /// The same key never runs twice
        #[arg(long)]
        idempotency_key: Option<String>,
    },
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
    /// List the plans (operator key)
    Plans,
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantCommand {
    /// Create a tenant
    Create {
        name: String,
        #[arg(long)]
        plan: Option<String>,
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

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

/// What went wrong, and so which exit code.
enum Failure {
    Api(u16, Value),
    Network(String),
    Usage(String),
}

struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Client {
    fn new(connection: &Connection) -> Result<Client, Failure> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| Failure::Network(e.to_string()))?;
        Ok(Client {
            base: connection.url.trim_end_matches('/').to_string(),
            key: connection.key.clone(),
            http,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), Failure> {
        let request = match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Network(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::Network(e.to_string()))?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|_| {
            Failure::Network(format!(
                "{} answered {status} with something that is not JSON",
                self.base
            ))
        })?;
        if status >= 400 {
            return Err(Failure::Api(status, body));
        }
        Ok((status, body))
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .1)
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
    Usage,
    Admin(AdminCommand),
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

/// What a command prints: a table (header, rows), a single value, or JSON only.
enum Output {
    Table(Value, Vec<&'static str>, Vec<Vec<String>>),
    Text(Value, String),
}

fn print_output(output: &Output, as_json: bool) {
    match output {
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

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

async fn run(connection: &Connection, request: Request) -> Result<Output, Failure> {
    let client = Client::new(connection)?;
    match request {
        Request::Component(ComponentCommand::Add { name, file }) => {
            let bytes = std::fs::read(&file)
                .map_err(|e| Failure::Usage(format!("read {}: {e}", file.display())))?;
            let request = client
                .http
                .post(format!("{}/v1/components/{name}", client.base))
                .header("content-type", "application/wasm")
                .body(bytes);
            let (status, body) = client.send(request).await?;
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
            env,
            args,
        }) => {
            let env: serde_json::Map<String, Value> =
                env.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let body = client
                .post(
                    &format!("/v1/components/{component}/workers"),
                    json!({ "name": name, "env": env, "args": args }),
                    None,
                )
                .await?;
            let text = format!(
                "created worker {name} of {component} version {}",
                body["component_version"]
            );
            Ok(Output::Text(body, text))
        }
        Request::Worker(WorkerCommand::List { component }) => {
            let body = client
                .get(&format!("/v1/components/{component}/workers"))
                .await?;
            let rows = body["workers"]
                .as_array()
                .map(|ws| ws.iter().map(|w| vec![text(w)]).collect())
                .unwrap_or_default();
            Ok(Output::Table(body, vec!["worker"], rows))
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
        }) => {
            let params = params
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    serde_json::from_str::<Value>(p).map_err(|e| {
                        Failure::Usage(format!("parameter {} is not JSON ({e}): {p}", i + 1))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let body = client
                .post(
                    &format!("/v1/components/{component}/workers/{name}/invoke"),
                    json!({ "function": function, "params": params }),
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
                    text(&plan["fuel_per_month"]),
                ],
                vec![
                    "invocations".into(),
                    text(&body["invocations"]),
                    String::new(),
                ],
                vec![
                    "workers".into(),
                    text(&body["workers"]),
                    text(&plan["workers_max"]),
                ],
                vec![
                    "components".into(),
                    text(&body["components"]),
                    text(&plan["components_max"]),
                ],
                vec![
                    "component bytes".into(),
                    text(&body["component_bytes"]),
                    text(&plan["component_bytes_max"]),
                ],
            ];
            Ok(Output::Table(body, vec!["usage", "used", "limit"], rows))
        }
        Request::Admin(AdminCommand::Tenant(TenantCommand::Create { name, plan })) => {
            let body = client
                .post(
                    "/v1/admin/tenants",
                    json!({ "name": name, "plan": plan }),
                    None,
                )
                .await?;
            let text = format!(
                "created tenant {} ({}) on plan {}",
                text(&body["id"]),
                name,
                text(&body["plan"])
            );
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
        Request::Admin(AdminCommand::Plans) => {
            let body = client.get("/v1/admin/plans").await?;
            let rows = body["plans"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            vec![
                                text(&p["name"]),
                                text(&p["fuel_per_invocation"]),
                                text(&p["fuel_per_month"]),
                                text(&p["workers_max"]),
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
