//! Helpers of the end-to-end tests: locate the built binaries, start them on loopback, and
//! find the real services (PostgreSQL, S3, Pushgateway) the test command started.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary of the workspace (built by the test command before the tests run).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --workspace` first", path.display());
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
        cmd.args(["devstore", "--listen", "127.0.0.1:0", "--db"]).arg(db).args(extra);
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
pub fn spawn_until_line(mut cmd: Command, prefix: &str) -> (Proc, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
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
            assert!(std::env::var_os("CI").is_none(), "{var} is not set under CI: run the tests through .ci/test");
            eprintln!("skipping: {var} is not set (run the tests through .ci/test to start the services)");
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
