//! Helpers of the end-to-end tests: locate the built binaries, start them on loopback, and
//! find the real services (PostgreSQL, S3, Pushgateway) the test command started.

pub mod fixture;
pub mod gateway;
pub mod proxy;
pub mod schema;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary of the workspace (built by the test command before the tests run).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A child process killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// The child.
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An embedded EventStore started from the `backup-server devstore` binary.
#[derive(Debug)]
pub struct Devstore {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The database file.
    pub db: PathBuf,
    /// The process.
    pub proc: Proc,
    _dir: Option<tempfile::TempDir>,
}

impl Devstore {
    /// Starts a devstore on a fresh database.
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("devstore.db");
        let mut s = Self::start_on(&db, extra);
        s._dir = Some(dir);
        s
    }

    /// Starts a devstore on `db`.
    pub fn start_on(db: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin("backup-server"));
        cmd.args(["devstore", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(extra);
        let (proc, line) = spawn_until_line(cmd, "devstore listening on ");
        let addr = line
            .trim_start_matches("devstore listening on ")
            .split_whitespace()
            .next()
            .expect("address")
            .to_string();
        Self {
            addr,
            db: db.to_path_buf(),
            proc,
            _dir: None,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Spawns `cmd` and waits (up to 60 s) for a stdout line starting with `prefix`.
pub fn spawn_until_line(cmd: Command, prefix: &str) -> (Proc, String) {
    spawn_until_line_with(cmd, prefix, Stdio::inherit())
}

/// [`spawn_until_line`] with the process's standard error sent to `stderr`.
pub fn spawn_until_line_with(mut cmd: Command, prefix: &str, stderr: Stdio) -> (Proc, String) {
    cmd.stdout(Stdio::piped()).stderr(stderr);
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = prefix.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && line.starts_with(&wanted) {
                let _ = tx.send(line.clone());
                sent = true;
            }
        }
    });
    let proc = Proc { child };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => (proc, line),
        Err(_) => panic!("process did not print a line starting with {prefix:?} within 60 s"),
    }
}

/// An environment variable naming a service the test command started. Without it the test is
/// skipped with a message, except under CI (`CI` set), where a missing service is a failure.
pub fn service_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{var} is not set under CI: run the tests through .ci/test"
            );
            eprintln!(
                "skipping: {var} is not set (run the tests through .ci/test to start the services)"
            );
            None
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_for`] for a check that awaits (a query), sleeping on the runtime between tries.
pub async fn wait_for_async<T, F>(timeout: Duration, mut f: impl FnMut() -> F) -> Option<T>
where
    F: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A BackupService started from the `backup-server serve` binary.
#[derive(Debug)]
pub struct Server {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The process.
    pub proc: Proc,
}

impl Server {
    /// Starts `backup-server serve --listen 127.0.0.1:0 ARGS…` with `envs`.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin("backup-server"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        // Tests compare stores exactly; the events the service emits are tested on their own.
        cmd.env("BACKUP_EMIT_EVENTS", "false");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let (proc, line) = spawn_until_line(cmd, "backup-server listening on ");
        Self {
            addr: line
                .trim_start_matches("backup-server listening on ")
                .trim()
                .to_string(),
            proc,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Out {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A workspace binary with `args`, as the tests run it: no key from the test's own
/// environment, warnings only, no events emitted.
pub fn command(name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin(name));
    cmd.args(args)
        .env_remove("BACKUP_ENCRYPTION_KEY")
        .env_remove("BACKUP_PASSPHRASE")
        .env("RUST_LOG", "warn")
        .env("BACKUP_EMIT_EVENTS", "false");
    cmd
}

/// Runs a workspace binary to completion with `envs` added.
pub fn run(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Out {
    let mut cmd = command(name, args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    output(cmd)
}

/// Runs `cmd` to completion.
pub fn output(mut cmd: Command) -> Out {
    let out = cmd.output().expect("run");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd` to completion, or kills it after `limit` (its code is then `None`): for a command
/// that must end by itself, so that a test of it fails instead of hanging.
pub fn output_within(mut cmd: Command, limit: Duration) -> Out {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    output_within_child(child, limit)
}

/// The output of `child` (spawned with piped stdout and stderr) once it ends, or once it was
/// killed after `limit` (its code is then `None`).
pub fn output_within_child(mut child: Child, limit: Duration) -> Out {
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let ended = wait_for(limit, || child.try_wait().expect("wait"));
    if ended.is_none() {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    Out {
        code: ended.and(status.code()),
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

/// The output of `child` once it ends (or is killed after `limit`), waited for off the async
/// runtime's thread.
pub async fn output_of(child: Child, limit: Duration) -> Out {
    tokio::task::spawn_blocking(move || output_within_child(child, limit))
        .await
        .expect("join")
}

/// Sends signal `sig` ("TERM", "INT", "KILL") to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill")
        .success());
}

/// A loopback address that takes connections and never answers (a hung peer).
pub fn silent_peer() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let held: Vec<_> = l.incoming().collect();
        drop(held);
    });
    addr
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A moto S3 server of the test's own (for tests that kill it or change its settings).
pub fn start_moto(envs: &[(&str, &str)]) -> (Proc, String) {
    let port = free_port();
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .expect("moto_server on PATH (installed by .ci/test)");
    let proc = Proc { child };
    wait_for(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("moto_server started");
    (proc, format!("http://127.0.0.1:{port}"))
}

/// S3 credentials moto accepts.
pub const S3_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

/// An S3 client for the test's own checks.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Creates a bucket with a fresh name and returns it.
pub async fn new_bucket(client: &aws_sdk_s3::Client) -> String {
    let name = format!("mbk-{}", uuid::Uuid::new_v4().simple());
    client
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create bucket");
    name
}

/// A fresh PostgreSQL database on the server at `pg` (a URL ending in a database name); returns
/// its URL. Its name carries `MBK_TEST_RUN` when set (`.ci/test` drops the run's databases
/// after it passes).
pub async fn fresh_db(pg: &str, prefix: &str) -> String {
    let run = std::env::var("MBK_TEST_RUN").unwrap_or_default();
    let run: String = run
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect();
    let name = format!("{prefix}_{run}_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(pg)
        .await
        .expect("connect to TEST_PG_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    format!("{}/{name}", pg.rsplit_once('/').expect("database URL").0)
}

/// `GET url` (plain `http://HOST:PORT/PATH`) with HTTP/1.0: status code and body.
pub fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other("not an http:// URL"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of the sample of `metric` whose labels include every `labels` pair, from a
/// Prometheus text exposition.
pub fn metric_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A new key file `backup.key` in `dir` made by `backup-server keygen`; returns its path.
pub fn keygen(dir: &Path) -> String {
    let path = dir.join("backup.key");
    let out = run(
        "backup-server",
        &["keygen", "--out", path.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    path.to_str().expect("utf8").to_string()
}

/// Runs `openssl ARGS` in `dir`; returns its standard output (fails the test on an error).
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
