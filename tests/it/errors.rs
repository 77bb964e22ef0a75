//! Every error names what to do, and exits with the code a script branches on: one table of the
//! mistakes operators make (the wrong address, the wrong kind of server, a missing or wrong key,
//! a damaged archive, a wrong destination path), each driven through the binaries as a user runs
//! them, each with its exit code and the words that tell what to do.

use monoskope_backup_tests::fixture::{sample, store, Fixture};
use monoskope_backup_tests::{free_port, keygen, run, Devstore, Out};

/// One mistake: what was run, the exit code, and what the one line on stderr must say.
struct Case {
    what: &'static str,
    out: Out,
    code: i32,
    says: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_names_what_to_do_with_its_exit_code() {
    let f = Fixture::new();
    let es = Devstore::start(&[]);
    store(&es, sample(60)).await;
    let id = f.backup(&es);
    let metrics = format!("127.0.0.1:{}", free_port());
    let s = monoskope_backup_tests::fixture::serve(
        &es.addr,
        &f.dest,
        &f.catalog(),
        &f.key,
        &["--metrics-address", &metrics],
    );
    let other_dir = f.dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let other_key = keygen(&other_dir);
    let nothing = format!("127.0.0.1:{}", free_port());
    let ctl = |server: &str, args: &[&str]| {
        let mut all = vec!["--server", server, "--timeout", "5s"];
        all.extend_from_slice(args);
        run("backupctl", &all, &[])
    };
    let verify = |extra: &[&str]| {
        let mut all = vec!["verify", "latest", "--destination", &f.dest];
        all.extend_from_slice(extra);
        run("backup-server", &all, &[])
    };
    let empty = f.dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");

    let mut cases = vec![
        Case {
            what: "the service is not running",
            out: ctl(&format!("http://{nothing}"), &["list"]),
            code: 3,
            says: vec![
                "Connection refused".into(),
                "is `backup-server serve` running there? Set --server or BACKUP_SERVER".into(),
            ],
        },
        Case {
            what: "another gRPC service (the EventStore)",
            out: ctl(&es.url(), &["list"]),
            code: 3,
            says: vec![
                "does not offer monoskope.backup.v1.BackupService".into(),
                "is --server (BACKUP_SERVER) the BackupService's gRPC address".into(),
            ],
        },
        Case {
            what: "plain HTTP (the service's metrics port)",
            out: ctl(&format!("http://{metrics}"), &["list"]),
            code: 3,
            says: vec!["not gRPC".into(), "not its metrics port".into()],
        },
        Case {
            what: "https:// against a plaintext service",
            out: ctl(&s.url().replace("http://", "https://"), &["list"]),
            code: 3,
            says: vec!["the server does not speak TLS".into(), "use http://".into()],
        },
        Case {
            what: "an EventStore address that is a BackupService",
            out: run(
                "backup-server",
                &[
                    "backup",
                    "--event-store",
                    &s.addr,
                    "--destination",
                    &f.dest,
                    "--key-file",
                    &f.key,
                ],
                &[],
            ),
            code: 1,
            says: vec![
                "this is not Monoskope's EventStore".into(),
                "check --event-store (BACKUP_EVENT_STORE)".into(),
            ],
        },
        Case {
            what: "a backup without a key",
            out: run(
                "backup-server",
                &[
                    "backup",
                    "--event-store",
                    &es.addr,
                    "--destination",
                    &f.dest,
                ],
                &[],
            ),
            code: 5,
            says: vec!["no encryption key: give --key-file".into()],
        },
        Case {
            what: "no key",
            out: verify(&[]),
            code: 5,
            says: vec![
                "no key to decrypt the backups with".into(),
                "--no-key".into(),
            ],
        },
        Case {
            what: "a wrong key",
            out: verify(&["--key-file", &other_key]),
            code: 6,
            says: vec!["could not be opened with the keys given".into()],
        },
        Case {
            what: "a destination directory that does not exist",
            out: run(
                "backup-server",
                &[
                    "list",
                    "--destination",
                    &format!("file://{}/nope", f.dir.path().display()),
                ],
                &[],
            ),
            code: 9,
            says: vec!["does not exist".into()],
        },
        Case {
            what: "a directory that holds no backups",
            out: run(
                "backup-server",
                &[
                    "list",
                    "--destination",
                    &format!("file://{}", empty.display()),
                ],
                &[],
            ),
            code: 9,
            says: vec![
                "nothing of monoskope-backup at".into(),
                "check --destination".into(),
            ],
        },
    ];
    // A damaged archive last (it changes the destination).
    let archive = f.archive(&id);
    let mut bytes = std::fs::read(&archive).expect("archive");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&archive, bytes).expect("damage");
    cases.push(Case {
        what: "a damaged archive",
        out: verify(&["--key-file", &f.key]),
        code: 7,
        says: vec!["failed verification".into()],
    });

    let mut wrong = Vec::new();
    for c in &cases {
        let line = c.out.stderr.trim().lines().last().unwrap_or_default();
        let ok = c.out.code == Some(c.code) && c.says.iter().all(|s| line.contains(s.as_str()));
        if !ok {
            wrong.push(format!(
                "{}: exit {:?} (want {}), last line {line:?} (want {:?})",
                c.what, c.out.code, c.code, c.says
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `serve` checks what it needs before it accepts work and names every problem, one line each:
/// a destination it cannot write and a catalog it cannot create, both at once.
#[test]
fn serve_names_every_problem_before_it_starts() {
    let f = Fixture::new();
    let blocker = f.dir.path().join("blocker");
    std::fs::write(&blocker, "a file, not a directory").expect("blocker");
    let dest = format!("file://{}/backups-here", blocker.display());
    let catalog = format!("sqlite://{}/catalog.db", blocker.display());
    let out = run(
        "backup-server",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--destination",
            &dest,
            "--catalog",
            &catalog,
            "--key-file",
            &f.key,
            "--event-store",
            "127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("backup-server: error: "))
        .collect();
    assert_eq!(errors.len(), 3, "{out:?}");
    assert!(
        errors[0].contains(&format!("destination {dest}")),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("backup-server: error: catalog: "),
        "{errors:?}"
    );
    assert_eq!(
        errors[2],
        "backup-server: error: 2 problem(s) above; the service did not start"
    );
    assert!(!out.stdout.contains("listening"), "{out:?}");
}
