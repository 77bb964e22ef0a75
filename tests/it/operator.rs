//! The CLIs as an operator at 3 a.m. meets them (issue 33, first steps): nothing hangs on a peer
//! that never answers, and output into a closed pipe ends quietly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use monoskope_backup_tests::fixture::{devstore_with, serve};
use monoskope_backup_tests::{bin, keygen, output_within_child, run, silent_peer};

#[test]
fn backupctl_against_a_peer_that_never_answers_ends_at_its_timeout() {
    let peer = silent_peer();
    for args in [vec!["status"], vec!["list"], vec!["create"]] {
        let started = Instant::now();
        let mut all = vec!["--server", peer.as_str(), "--timeout", "2s"];
        all.extend_from_slice(&args);
        let out = run("backupctl", &all, &[]);
        let took = started.elapsed();
        assert_eq!(out.code, Some(3), "unreachable: {args:?}: {out:?}");
        assert!(took < Duration::from_secs(15), "{args:?} took {took:?}");
        assert!(
            out.stderr
                .contains(&format!("no answer from http://{peer} within 2s"))
                && out
                    .stderr
                    .contains("is `backup-server serve` running there"),
            "{args:?}: {out:?}"
        );
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    }
    let bad = run("backupctl", &["--timeout", "0s", "status"], &[]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
}

/// Runs `bin args` with its standard output a pipe whose reader is already gone.
fn into_a_closed_pipe(name: &str, args: &[&str]) -> monoskope_backup_tests::Out {
    let mut child = Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    output_within_child(child, Duration::from_secs(60))
}

#[tokio::test]
async fn output_into_a_closed_pipe_ends_quietly_with_exit_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(2000).await;
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let s = serve(&ds.addr, &dest, &catalog, &key, &[]);
    let created = run(
        "backupctl",
        &["--server", &s.url(), "create", "--wait"],
        &[],
    );
    assert_eq!(created.code, Some(0), "{created:?}");
    let id = created.stdout.lines().last().expect("id").to_string();
    let archive = dir.path().join(format!("dest/backups/{id}.mbk"));
    let archive = archive.to_str().expect("utf8");
    let url = s.url();
    for (name, args) in [
        ("backupctl", vec!["--server", &url, "list", "--all"]),
        ("backupctl", vec!["--server", &url, "status", "--json"]),
        (
            "backup-server",
            vec!["inspect", archive, "--key-file", &key],
        ),
        (
            "backup-server",
            vec!["list", "--json", "--destination", &dest],
        ),
    ] {
        let out = into_a_closed_pipe(name, &args);
        assert_eq!(out.code, Some(0), "{name} {args:?}: {out:?}");
        assert!(
            !out.stderr.contains("panicked") && !out.stderr.contains("error"),
            "{name} {args:?}: {out:?}"
        );
    }
}

/// Health as Kubernetes asks for it, with the real `grpc-health-probe`: SERVING once `serve`
/// listens, NOT_SERVING from SIGTERM on while it drains, then gone.
#[tokio::test]
async fn grpc_health_probe_sees_serving_then_not_serving_while_it_drains() {
    let Some(probe) = monoskope_backup_tests::service_env("TEST_GRPC_HEALTH_PROBE") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path());
    let ds = devstore_with(10).await;
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let mut s = serve(&ds.addr, &dest, &catalog, &key, &[]);
    let addr = s.addr.clone();
    let check = |service: Option<&str>| {
        let mut cmd = Command::new(&probe);
        cmd.args([
            format!("-addr={addr}"),
            "-connect-timeout=2s".into(),
            "-rpc-timeout=2s".into(),
        ]);
        if let Some(svc) = service {
            cmd.arg(format!("-service={svc}"));
        }
        let out = cmd.output().expect("grpc-health-probe");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for svc in [None, Some("monoskope.backup.v1.BackupService")] {
        let (code, out) = check(svc);
        assert_eq!(code, Some(0), "{svc:?}: {out}");
        assert!(out.contains("SERVING"), "{svc:?}: {out}");
    }
    monoskope_backup_tests::signal(s.proc.child.id(), "TERM");
    // The probe sees NOT_SERVING (exit 4) while the service drains, before it exits.
    let seen = monoskope_backup_tests::wait_for(Duration::from_secs(10), || {
        let (code, out) = check(Some("monoskope.backup.v1.BackupService"));
        (code == Some(4)).then_some(out)
    });
    let out = seen.expect("NOT_SERVING while draining");
    assert!(out.contains("NOT_SERVING"), "{out}");
    let exited = monoskope_backup_tests::wait_for(Duration::from_secs(30), || {
        s.proc.child.try_wait().expect("wait")
    });
    assert!(exited.is_some_and(|st| st.success()), "{exited:?}");
}

/// Shell completions and man pages, generated from the CLI definitions: every command is in
/// them; a closed pipe ends them quietly.
#[test]
fn completions_and_man_pages_come_from_the_cli_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = monoskope_backup_tests::run("backup-server", &["completions", shell], &[]);
        assert_eq!(out.code, Some(0), "{out:?}");
        for cmd in ["serve", "restore", "rewrap", "retention", "verify"] {
            assert!(out.stdout.contains(cmd), "{shell}: {cmd} missing");
        }
        let out = monoskope_backup_tests::run("backupctl", &["completions", shell], &[]);
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(
            out.stdout.contains("drill") && out.stdout.contains("status"),
            "{shell}"
        );
    }
    let out = monoskope_backup_tests::run("backup-server", &["man"], &[]);
    assert!(
        out.stdout.starts_with(".ie") && out.stdout.contains(".TH backup-server 1"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("utf8");
    let out = monoskope_backup_tests::run("backup-server", &["man", "--out", d], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    for page in [
        "backup-server.1",
        "backup-server-restore.1",
        "backup-server-rewrap.1",
        "backup-server-retention-plan.1",
    ] {
        assert!(dir.path().join(page).exists(), "{page} missing");
    }
    let out = monoskope_backup_tests::run("backupctl", &["man"], &[]);
    assert!(out.stdout.contains(".TH backupctl 1"), "{out:?}");
    // Into a closed pipe: exit 0, nothing on stderr.
    for (bin, args) in [
        ("backup-server", vec!["completions", "bash"]),
        ("backupctl", vec!["man"]),
    ] {
        let mut c = monoskope_backup_tests::command(bin, &args);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("spawn");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `serve` without any key refuses to start, in one line, rather than fail at the first backup.
#[test]
fn serve_without_a_key_does_not_start() {
    let dir = tempfile::tempdir().expect("dir");
    let dest = format!("file://{}", dir.path().join("dest").display());
    let catalog = format!("sqlite://{}", dir.path().join("c.db").display());
    let out = monoskope_backup_tests::output_within(
        monoskope_backup_tests::command(
            "backup-server",
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--destination",
                &dest,
                "--catalog",
                &catalog,
            ],
        ),
        std::time::Duration::from_secs(20),
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("no encryption key") && out.stderr.contains("did not start"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("listening"), "{out:?}");
}

/// `backupctl describe` shows one backup in full, and a unique prefix of an id works wherever an
/// id does (`describe`, `restore`, `verify`); a prefix that fits several is refused naming them
/// (exit 2), one that fits none is not found (exit 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_and_unique_id_prefixes() {
    use monoskope_backup_tests::fixture::{sample, store, Fixture};
    let f = Fixture::new();
    let es = monoskope_backup_tests::Devstore::start(&[]);
    store(&es, sample(40)).await;
    let first = f.backup(&es);
    store(
        &es,
        monoskope_backup::devstore::sample::events(10, 2, 1_800_000_000, 4).collect(),
    )
    .await;
    let out = run(
        "backup-server",
        &[
            "backup",
            "--incremental",
            "--event-store",
            &es.addr,
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
            "--catalog",
            &f.catalog(),
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let second = out.stdout.lines().last().expect("id").to_string();
    // The two ids share their first characters (the date); their whole time part tells them apart.
    let shared = &first[..8];
    let unique = &second[..19];
    assert!(!first.starts_with(unique));

    let s = monoskope_backup_tests::fixture::serve(&es.addr, &f.dest, &f.catalog(), &f.key, &[]);
    let url = s.url();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        run("backupctl", &all, &[])
    };
    let d = ctl(&["describe", unique]);
    assert_eq!(d.code, Some(0), "{d:?}");
    for want in [
        format!("Backup       {second} (incremental, succeeded)"),
        "Chain        2 backup(s), full first; a restore of it reads 50 events".to_string(),
        format!("  {first} full"),
        "Lock         none (no S3 Object Lock)".to_string(),
        "Copies       none configured".to_string(),
        format!("`backupctl drill {second}`"),
    ] {
        assert!(d.stdout.contains(&want), "{want:?} in\n{}", d.stdout);
    }
    let j = ctl(&["describe", unique, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("json");
    assert_eq!(v["backup"]["id"], second.as_str());
    assert_eq!(v["chain"][0]["id"], first.as_str());
    let ambiguous = ctl(&["describe", shared]);
    assert_eq!(ambiguous.code, Some(2), "{ambiguous:?}");
    assert!(
        ambiguous
            .stderr
            .contains(&format!("{shared} is ambiguous: 2 backups start with it")),
        "{ambiguous:?}"
    );
    let none = ctl(&["describe", "19990101T00"]);
    assert_eq!(none.code, Some(9), "{none:?}");
    drop(s);

    // backup-server: verify and restore take the prefix too (resolved by the engine).
    let v = run(
        "backup-server",
        &[
            "verify",
            unique,
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
        ],
        &[],
    );
    assert_eq!(v.code, Some(0), "{v:?}");
    assert!(v.stdout.contains(&format!("ok      {second}")), "{v:?}");
    let dst = monoskope_backup_tests::Devstore::start(&[]);
    let r = f.restore(&[unique, "--event-store", &dst.addr, "--via-api"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains(&format!("restored backup {second}")),
        "{r:?}"
    );
    let r = f.restore(&[shared, "--event-store", &dst.addr, "--via-api"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("is ambiguous"), "{r:?}");
}

/// `backupctl context`: the server and token file kept under a name (the file 0600, the token
/// itself never in it), used without flags; flags still win; an unknown context is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backupctl_contexts_keep_the_server_and_token_file() {
    let es = devstore_with(20).await;
    let f = monoskope_backup_tests::fixture::Fixture::new();
    let s = serve(&es.addr, &f.dest, &f.catalog(), &f.key, &[]);
    let home = tempfile::tempdir().expect("home");
    let file = home.path().join("backupctl.yaml");
    let token = home.path().join("token");
    std::fs::write(&token, "not-needed-on-loopback").expect("token");
    let env = [("BACKUPCTL_CONFIG", file.to_str().expect("utf8"))];
    let out = run(
        "backupctl",
        &[
            "context",
            "set",
            "local",
            "--server",
            &s.url(),
            "--token-file",
            token.to_str().expect("utf8"),
            "--timeout",
            "10s",
        ],
        &env,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&file).expect("file");
    assert!(
        text.contains("current: local") && text.contains(&s.url()),
        "{text}"
    );
    assert!(
        !text.contains("not-needed-on-loopback"),
        "the token itself is never stored"
    );
    // Without flags: the current context's server.
    let out = run("backupctl", &["list"], &env);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = run("backupctl", &["context", "list"], &env);
    assert!(
        out.stdout
            .contains(&format!("* local            {}", s.url())),
        "{out:?}"
    );
    // A flag wins over the context.
    let out = run(
        "backupctl",
        &["--server", "http://127.0.0.1:1", "list"],
        &env,
    );
    assert_eq!(out.code, Some(3), "{out:?}");
    let out = run("backupctl", &["--context", "prod", "list"], &env);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("no context \"prod\" (known: local)"),
        "{out:?}"
    );
}

/// Help shows the flags a command uses: `list`'s help names the destination's flags and not the
/// EventStore's, the keys' or the schedule's (which it still accepts, so one set of flags works
/// for every command of a script).
#[test]
fn help_shows_only_the_flags_a_command_uses() {
    let help = run("backup-server", &["list", "--help"], &[]);
    assert_eq!(help.code, Some(0), "{help:?}");
    for shown in [
        "--destination",
        "--s3-endpoint",
        "--copy-destination",
        "--json",
    ] {
        assert!(help.stdout.contains(shown), "{shown} in {}", help.stdout);
    }
    for hidden in [
        "--event-store",
        "--events-db",
        "--key-file",
        "--pushgateway-url",
        "--keep-daily",
    ] {
        assert!(!help.stdout.contains(hidden), "{hidden} in {}", help.stdout);
    }
    let verify = run("backup-server", &["verify", "--help"], &[]);
    assert!(verify.stdout.contains("--key-file") && !verify.stdout.contains("--events-db"));
    let plan = run("backup-server", &["retention", "plan", "--help"], &[]);
    assert!(plan.stdout.contains("--keep-daily") && !plan.stdout.contains("--event-store"));
    // Still accepted.
    let dir = tempfile::tempdir().expect("dir");
    let out = run(
        "backup-server",
        &[
            "list",
            "--event-store",
            "127.0.0.1:1",
            "--destination",
            &format!("file://{}", dir.path().display()),
        ],
        &[],
    );
    assert_eq!(out.code, Some(9), "parsed, then nothing there: {out:?}");
}
