//! Test support for Invicta's cross-service tests (`tests/integration`): the real server binary
//! as a child process on a free loopback port with its own data directory, which a test can
//! stop gracefully or kill with SIGKILL and start again on the same data.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

mod api;

pub use api::{Api, Reply, component};

/// How long a server may take to print its address before the test gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The operator key every test server starts with (`INVICTA_OPERATOR_KEY`).
pub const OPERATOR_KEY: &str =
    "inv_000000000000_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A running `invicta server`.
pub struct Server {
    child: Child,
    pub url: String,
    /// The public listener's URL, when the server serves public routes.
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    binary: PathBuf,
}

impl Server {
    /// Starts `binary server` on 127.0.0.1 with a free port and `data_dir`.
    pub fn start(binary: &Path, data_dir: &Path) -> anyhow::Result<Server> {
        Self::start_with(binary, data_dir, &[])
    }

    /// Starts the server with extra arguments after `server`.
    pub fn start_with(binary: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        Self::start_at(binary, data_dir, "127.0.0.1:0", extra)
    }

    /// Starts the server listening on `listen` (e.g. the address a killed server had).
    pub fn start_at(
        binary: &Path,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        Self::start_env(binary, data_dir, listen, extra, &[])
    }

    /// Starts `server --role ROLE` on `data_dir` with `config` (TOML), which is written beside
    /// the data directory (several processes of one role share it).
    pub fn start_role(
        binary: &Path,
        data_dir: &Path,
        role: &str,
        config: &str,
    ) -> anyhow::Result<Server> {
        Self::start_role_env(binary, data_dir, role, config, &[])
    }

    /// [`Server::start_role`] with extra environment variables.
    pub fn start_role_env(
        binary: &Path,
        data_dir: &Path,
        role: &str,
        config: &str,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let file = data_dir.with_file_name(format!("{role}.toml"));
        std::fs::write(&file, config).with_context(|| format!("write {}", file.display()))?;
        let file = file.to_string_lossy().into_owned();
        Self::start_env(
            binary,
            data_dir,
            "127.0.0.1:0",
            &["--role", role, "--config", &file],
            envs,
        )
    }

    /// Starts the server with extra environment variables.
    pub fn start_env(
        binary: &Path,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let mut child = Command::new(binary)
            .arg("server")
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env(
                "INVICTA_LOG",
                std::env::var("INVICTA_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("INVICTA_OPERATOR_KEY", OPERATOR_KEY)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let first_word = |rest: &str| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            };
            let mut public = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("invicta public routes on ") {
                    public = Some(first_word(rest));
                }
                if let Some(rest) = line.strip_prefix("invicta listening on ") {
                    let _ = tx.send((first_word(rest), public.clone()));
                }
            }
        });
        let (url, public_url) = match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("the server did not print its address (exit status {status})");
            }
        };
        Ok(Server {
            child,
            url,
            public_url,
            data_dir: data_dir.to_path_buf(),
            binary: binary.to_path_buf(),
        })
    }

    /// A client calling as the operator.
    pub fn operator(&self) -> Api {
        Api::new(&self.url).with_key(OPERATOR_KEY)
    }

    /// Kills the server with SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// Freezes the server with SIGSTOP, as a long pause (a VM migration, a GC, a swap storm)
    /// would: it neither runs nor dies.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn unpause(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The processes the server started that are still alive (Linux: `/proc/*/stat`).
    pub fn children(&self) -> Vec<u32> {
        let me = self.child.id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    // The fields after the command's closing parenthesis: state, ppid, …
                    .and_then(|stat| {
                        let rest = stat.rsplit_once(')')?.1;
                        rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                    })
                    == Some(me)
            })
            .collect()
    }

    /// The CPU time the server has used so far, with that of the children it waited for, in
    /// seconds (Linux: `/proc/<pid>/stat`).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let rest = stat.rsplit_once(')').context("/proc/<pid>/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime, stime, cutime, cstime: fields 14 to 17 of the line, 12 to 15 after the ')'.
        let ticks: u64 = fields
            .get(11..15)
            .context("CPU times in /proc/<pid>/stat")?
            .iter()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .sum();
        // SAFETY: sysconf only reads a system setting.
        #[allow(unsafe_code)]
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        Ok(ticks as f64 / per_second as f64)
    }

    /// The server's resident memory now, in bytes (Linux: `/proc/<pid>/status`).
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("VmRSS in /proc/<pid>/status")?;
        Ok(kib * 1024)
    }

    /// Stops the server with SIGTERM and returns whether it exited cleanly.
    pub fn stop(mut self) -> anyhow::Result<bool> {
        self.signal(libc::SIGTERM)?;
        Ok(self.child.wait()?.success())
    }

    /// Kills the server and starts a new one on the same data directory and address.
    pub fn restart_in_place(self) -> anyhow::Result<Server> {
        let (binary, data_dir) = (self.binary.clone(), self.data_dir.clone());
        let listen = self
            .url
            .strip_prefix("http://")
            .unwrap_or(&self.url)
            .to_string();
        self.kill()?;
        Server::start_at(&binary, &data_dir, &listen, &[])
    }

    /// Starts a new server on the same data directory.
    pub fn restart(self) -> anyhow::Result<Server> {
        let (binary, data_dir) = (self.binary.clone(), self.data_dir.clone());
        self.kill()?;
        Server::start(&binary, &data_dir)
    }

    fn signal(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scheduler, an executor and a gateway as separate processes on one store.
pub struct Apart {
    // Fields drop in order: the gateway first.
    pub gateway: Server,
    pub executor: Server,
    pub scheduler: Server,
}

impl Apart {
    /// Starts the roles on the data in `data_dir`, the gateway with `gateway_config` besides
    /// its peers.
    pub fn start(binary: &Path, data_dir: &Path, gateway_config: &str) -> anyhow::Result<Apart> {
        std::fs::create_dir_all(data_dir)?;
        let scheduler = Server::start_role(
            binary,
            data_dir,
            "scheduler",
            "[scheduler]\nlisten = \"127.0.0.1:0\"\nlease_ms = 2000\n",
        )?;
        let peers = format!(
            "[grpc]\nexecutor_listen = \"127.0.0.1:0\"\nscheduler = \"{}\"\n",
            scheduler.url
        );
        let executor = Server::start_role(binary, data_dir, "executor", &peers)?;
        let gateway = Server::start_role(
            binary,
            data_dir,
            "gateway",
            &format!("{gateway_config}{peers}"),
        )?;
        Ok(Apart {
            gateway,
            executor,
            scheduler,
        })
    }
}

/// Waits until `condition` holds, checking every 50 ms, for at most `timeout`; fails naming
/// `what` (and the last value seen) otherwise. Tests wait for observable state with this, never
/// for a fixed time.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match condition().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "not yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: still not so after {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server's data directory and configuration under a test's scratch directory: the TOML is
/// written once, and every [`Configured::start`] runs a server on the same data and
/// configuration (again after a kill, say).
pub struct Configured {
    binary: PathBuf,
    pub dir: PathBuf,
    config: String,
}

impl Configured {
    pub fn new(binary: &Path, scratch: &Path, toml: &str) -> anyhow::Result<Configured> {
        let config = scratch.join("invicta.toml");
        std::fs::write(&config, toml).with_context(|| format!("write {}", config.display()))?;
        Ok(Configured {
            binary: binary.to_path_buf(),
            dir: scratch.join("data"),
            config: config.to_string_lossy().into_owned(),
        })
    }

    pub fn start(&self) -> anyhow::Result<Server> {
        Server::start_with(&self.binary, &self.dir, &["--config", &self.config])
    }
}
