//! A throw-away `nats-server` with JetStream for tests: a free port on 127.0.0.1, a temporary
//! store directory, stopped (SIGTERM) or restarted on the same port and store on demand, and
//! killed when dropped. Tests only: it never talks to a server it did not start.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// How long a starting server may take to accept connections.
const START_TIMEOUT_MS: u64 = 15_000;
/// How long a stopping server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT_MS: u64 = 15_000;
/// Interval of the bounded readiness and exit polls.
const POLL_MS: u64 = 10;
/// Where Debian's package puts the binary when it is not on PATH.
const FALLBACK_BINARY: &str = "/usr/sbin/nats-server";

/// A running (or stopped) `nats-server -js`. See the module docs.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
}

fn find_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let fallback = Path::new(FALLBACK_BINARY);
    if fallback.is_file() {
        return Ok(fallback.to_path_buf());
    }
    Err(
        "nats-server not found on PATH or at /usr/sbin/nats-server; \
         install it with `apt-get install nats-server`"
            .to_owned(),
    )
}

fn free_port() -> Result<u16, String> {
    // The port is free when the listener closes; another process could take it before the
    // server binds, in which case the server fails to start and the test says so.
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl NatsServer {
    /// Starts a server and waits (bounded) until it accepts connections.
    pub async fn start() -> Result<Self, String> {
        Self::start_with_args(&[]).await
    }

    /// Starts a server with extra command-line arguments (e.g. `--user u --pass p`).
    pub async fn start_with_args(extra_args: &[&str]) -> Result<Self, String> {
        let binary = find_binary()?;
        let store = tempfile::Builder::new()
            .prefix("pl-bus-nats-")
            .tempdir()
            .map_err(|e| format!("no temporary store directory: {e}"))?;
        let mut server = Self {
            binary,
            port: free_port()?,
            store,
            child: None,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// The server's log, for a failing test to print.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("server.log")).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let dir = self.store.path();
        let child = Command::new(&self.binary)
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .arg("-sd")
            .arg(dir.join("jetstream"))
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "nats-server exited during start ({status}); log:\n{}",
                        self.log()
                    ));
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "nats-server did not accept connections on {addr} within {START_TIMEOUT_MS} ms; log:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    /// SIGTERM, then waits (bounded) for the exit; JetStream flushes its store on the way out.
    pub async fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| "nats-server has no valid pid".to_owned())?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .map_err(|e| format!("cannot signal nats-server: {e}"))?;
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "nats-server did not exit within {STOP_TIMEOUT_MS} ms of SIGTERM; killed"
                    ));
                }
            }
        }
    }

    /// Starts it again on the same port and store directory (stopping it first if running).
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop().await?;
        self.spawn().await
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
