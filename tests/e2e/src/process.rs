//! Starting the system the two ways a customer runs it: everything in this process (`up`, the
//! embedded log and the in-process bus), or the four services as separate `partner-ledger
//! serve` processes, each with its own data directory, talking over a NATS server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap_free::parse_up;
use pl_auth::testkit::{TestIssuer, ALL_ROLES};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Endpoints;

/// A process stopped within this after SIGTERM, or it is killed.
const STOP_TIMEOUT_MS: u64 = 15_000;
/// A service prints where it listens within this after start.
const START_TIMEOUT_MS: u64 = 60_000;

mod clap_free {
    use partner_ledger::config::{Cli, Command, UpArgs};

    /// `up` settings as the command line would give them (clap fills every default).
    pub fn parse_up(
        data_dir: &std::path::Path,
        listen: &str,
        sanctions_list: &std::path::Path,
    ) -> Result<UpArgs, String> {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "partner-ledger",
            "up",
            "--listen",
            listen,
            "--grace-period-ms",
            "2000",
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--sanctions-list",
            &sanctions_list.to_string_lossy(),
        ])
        .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Up(args) => Ok(args),
            _ => Err("not up".into()),
        }
    }
}

/// `partner-ledger up` inside this process.
#[derive(Debug)]
pub struct InProcess {
    pub running: partner_ledger::app::Running,
    pub endpoints: Endpoints,
}

impl InProcess {
    pub async fn start(data_dir: &Path) -> Result<Self, String> {
        let list = sanctions_list(data_dir)?;
        let args = parse_up(data_dir, "127.0.0.1:0", &list)?;
        let running = partner_ledger::app::start_up(&args)
            .await
            .map_err(|e| e.to_string())?;
        let endpoints = Endpoints::one(&running.local_addr.to_string());
        Ok(Self { running, endpoints })
    }

    pub async fn stop(self) -> Result<(), String> {
        self.running.shutdown();
        self.running.wait().await.map_err(|e| e.to_string())
    }
}

/// Writes the scenarios' sanctions list ([`crate::scenario::SANCTIONS_LIST`]) into `dir` and
/// returns its path: compliance screens against it.
fn sanctions_list(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let path = dir.join("sanctions-list.txt");
    std::fs::write(&path, crate::scenario::SANCTIONS_LIST).map_err(|e| e.to_string())?;
    Ok(path)
}

/// The `partner-ledger` binary next to the running executable (`target/<profile>/`).
pub fn binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    // Test and bench executables live in target/<profile>/deps.
    while let Some(d) = dir {
        let candidate = d.join("partner-ledger");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
        if dir.as_ref().is_some_and(|p| p.ends_with("target")) {
            break;
        }
    }
    Err("the partner-ledger binary is not built next to this executable; run `cargo build -p partner-ledger` (make test does)".into())
}

/// The four services as separate processes over NATS.
#[derive(Debug)]
pub struct Cluster {
    children: Vec<(String, Child)>,
    pub endpoints: Endpoints,
}

async fn spawn_serve(
    binary: &Path,
    service: &str,
    nats_url: &str,
    data_dir: &Path,
    issuer: &TestIssuer,
) -> Result<(Child, String), String> {
    let mut child = Command::new(binary)
        .args(["serve", service, "--bus", "nats", "--nats-url", nats_url])
        .args(issuer.args())
        .args(["--listen", "127.0.0.1:0", "--grace-period-ms", "2000"])
        .args([
            "--attribution-hash-salt",
            "e2e-salt",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--sanctions-list")
        .arg(sanctions_list(data_dir)?)
        .env("PL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| "no stdout".to_owned())?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_millis(START_TIMEOUT_MS), lines.next_line())
        .await
        .map_err(|_| format!("serve {service} did not start within {START_TIMEOUT_MS} ms"))?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("serve {service} exited during start"))?;
    let addr = line
        .strip_prefix("partner-ledger listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("serve {service}: unexpected first line {line:?}"))?
        .to_owned();
    Ok((child, addr))
}

impl Cluster {
    pub async fn start(nats_url: &str, base_dir: &Path) -> Result<Self, String> {
        let binary = binary()?;
        // `serve` never runs without authentication: a key of the run's own, the repository's
        // policy, and a token with every role for the scenario's calls.
        std::fs::create_dir_all(base_dir).map_err(|e| e.to_string())?;
        let issuer = TestIssuer::new(base_dir)?;
        let token = issuer.token("e2e", &ALL_ROLES)?;
        let mut children = Vec::new();
        let mut addr = std::collections::BTreeMap::new();
        for service in ["crm", "attribution", "commissions", "compliance"] {
            let dir = base_dir.join(service);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let (child, a) = spawn_serve(&binary, service, nats_url, &dir, &issuer).await?;
            children.push((service.to_owned(), child));
            addr.insert(service, a);
        }
        let get = |s: &str| addr.get(s).cloned().unwrap_or_default();
        Ok(Self {
            endpoints: Endpoints {
                crm: get("crm"),
                attribution: get("attribution"),
                commissions: get("commissions"),
                compliance: get("compliance"),
                token: Some(token),
            },
            children,
        })
    }

    /// SIGTERM to every process, then wait (bounded); each must exit cleanly.
    pub async fn stop(mut self) -> Result<(), String> {
        let mut failures = Vec::new();
        for (name, child) in &mut self.children {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            match tokio::time::timeout(Duration::from_millis(STOP_TIMEOUT_MS), child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => failures.push(format!("{name} exited with {status}")),
                Ok(Err(e)) => failures.push(format!("{name}: {e}")),
                Err(_) => {
                    let _ = child.kill().await;
                    failures.push(format!("{name} did not stop within {STOP_TIMEOUT_MS} ms"));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}
