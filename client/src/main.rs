//! `backupctl`: the command line of monoskope-backup's BackupService — what `monoctl backup …`
//! offers. Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use monoskope_backup_client::{
    human_bytes, pb, sink_words, term, BackupClient, ClientError, ClientOptions,
};

/// Talk to monoskope-backup's BackupService.
///
/// The bearer token comes from --token-file or MONOSKOPE_TOKEN, never from an argument.
#[derive(Debug, Parser)]
#[command(name = "backupctl", version, propagate_version = true)]
struct Cli {
    /// The BackupService: http://HOST:PORT or https://HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "BACKUP_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// PEM CA certificate to trust for https:// (system roots otherwise).
    #[arg(long, global = true, env = "BACKUP_SERVER_CA")]
    ca_file: Option<PathBuf>,
    /// File holding the bearer token (default: the MONOSKOPE_TOKEN environment variable).
    #[arg(long, global = true, env = "BACKUP_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a backup of the EventStore; with --wait, wait for it and exit 1 if it failed.
    Create {
        /// Wait until the backup has ended, showing its progress (a spinner on a terminal, a line on stderr every 10 s otherwise).
        #[arg(long)]
        wait: bool,
        /// Back up only what the newest backup chain does not hold.
        #[arg(long)]
        incremental: bool,
    },
    /// List backups, newest first (a failed backup's error and a backup's note under its row).
    List {
        /// Print JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list running, failed and incomplete backups.
        #[arg(long)]
        all: bool,
    },
    /// Restore a backup into the EventStore (admins only). Shows which backup (`latest` resolved) and asks for its id on a terminal unless --yes.
    Restore {
        /// Backup id, or `latest`.
        id: String,
        /// Restore exactly the events with timestamps up to and including this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Replace the events already in the store.
        #[arg(long)]
        drop_existing: bool,
        /// Write through the EventStore API (republishes every event on a real Monoskope bus).
        #[arg(long)]
        via_api: bool,
        /// Wait until the restore has ended, showing its progress (a spinner on a terminal, a line on stderr every 10 s otherwise), and print what to do next.
        #[arg(long)]
        wait: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Restore a backup into a scratch EventStore (never the live one) and check it against its
    /// archive and the live store; exit 1 unless everything matched. Admins and machine identities.
    Drill {
        /// Backup id, or `latest`.
        #[arg(default_value = "latest")]
        id: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the last backup success and failure, the running backup or restore (with progress), the last restore and the health of peers.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A check for deployment manifests (the Helm chart's tests): the arguments parse, nothing runs.
    if std::env::var_os("MBK_PARSE_ONLY").is_some() {
        println!("arguments ok: {:?}", cli.command);
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e.to_string()),
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("backupctl: error: {msg}");
    ExitCode::from(1)
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

fn state_name(s: i32) -> &'static str {
    match pb::OperationState::try_from(s) {
        Ok(pb::OperationState::Running) => "running",
        Ok(pb::OperationState::Succeeded) => "complete",
        Ok(pb::OperationState::Failed) => "failed",
        Ok(pb::OperationState::Incomplete) => "incomplete",
        _ => "unknown",
    }
}

fn kind_name(k: i32) -> &'static str {
    match pb::BackupKind::try_from(k) {
        Ok(pb::BackupKind::Incremental) => "incremental",
        _ => "full",
    }
}

fn backup_json(b: &pb::Backup) -> serde_json::Value {
    serde_json::json!({
        "id": b.id,
        "kind": kind_name(b.kind),
        "state": state_name(b.state),
        "parent_id": b.parent_id,
        "created_at": time(b.created_at.as_ref()),
        "completed_at": time(b.completed_at.as_ref()),
        "event_count": b.event_count,
        "bytes": b.bytes,
        "first_event_time": time(b.first_event_time.as_ref()),
        "last_event_time": time(b.last_event_time.as_ref()),
        "key_id": b.key_id,
        "format_version": b.format_version,
        "sha256": b.sha256,
        "created_by": b.created_by,
        "location": b.location,
        "error": b.error,
        "note": b.note,
    })
}

fn restore_json(r: &pb::Restore) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": r.id,
        "backup_id": r.backup_id,
        "state": match pb::OperationState::try_from(r.state) {
            Ok(pb::OperationState::Succeeded) => "succeeded",
            _ => state_name(r.state),
        },
        "started_at": time(r.started_at.as_ref()),
        "completed_at": time(r.completed_at.as_ref()),
        "event_count": r.event_count,
        "bytes": r.bytes,
        "until": r.until.as_ref().map(|u| time(Some(u))),
        "drop_existing": r.drop_existing,
        "sink": r.sink,
        "created_by": r.created_by,
        "error": r.error,
        "chain": r.chain,
    });
    if let Some(p) = &r.progress {
        v["progress"] = serde_json::json!({"events": p.events, "bytes": p.bytes});
    }
    v
}

async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    let opts = ClientOptions::new(cli.server.clone())
        .with_ca_file(cli.ca_file.clone())
        .with_token_from_env_or_file(cli.token_file.as_deref())?;
    let mut client = BackupClient::connect(&opts).await?;
    match cli.command {
        Command::Create { wait, incremental } => {
            let b = if wait {
                create_and_watch(&mut client, incremental).await?
            } else {
                client.create_backup(false, incremental).await?
            };
            match pb::OperationState::try_from(b.state) {
                Ok(pb::OperationState::Failed) => {
                    eprintln!("backupctl: error: backup {} failed: {}", b.id, b.error);
                    Ok(ExitCode::from(1))
                }
                Ok(pb::OperationState::Running) => {
                    println!("backup {} started; follow it with `backupctl status`", b.id);
                    Ok(ExitCode::SUCCESS)
                }
                _ => {
                    if !b.note.is_empty() {
                        eprintln!("note: {}", b.note);
                    }
                    println!(
                        "{} backup {} complete{}: {} events, {} at {}",
                        kind_name(b.kind),
                        b.id,
                        if b.parent_id.is_empty() {
                            String::new()
                        } else {
                            format!(" (parent {})", b.parent_id)
                        },
                        b.event_count,
                        human_bytes(b.bytes),
                        b.location
                    );
                    println!("{}", b.id);
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::List { json, all } => {
            let backups = client.list_all(all).await?;
            if json {
                let v: Vec<_> = backups.iter().map(backup_json).collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if backups.is_empty() {
                println!("no backups");
            } else {
                println!(
                    "{:<30} {:<11} {:<30} {:<10} {:>10} {:>10}  {:<20}  LAST EVENT",
                    "ID", "KIND", "PARENT", "STATE", "EVENTS", "SIZE", "CREATED"
                );
                for b in &backups {
                    println!(
                        "{:<30} {:<11} {:<30} {:<10} {:>10} {:>10}  {:<20}  {}",
                        b.id,
                        kind_name(b.kind),
                        if b.parent_id.is_empty() {
                            "-"
                        } else {
                            b.parent_id.as_str()
                        },
                        state_name(b.state),
                        b.event_count,
                        human_bytes(b.bytes),
                        time(b.created_at.as_ref()),
                        time(b.last_event_time.as_ref())
                    );
                    // Why a backup failed, or is not what was asked for, under its row.
                    if !b.error.is_empty() {
                        println!("    error: {}", b.error);
                    }
                    if !b.note.is_empty() {
                        println!("    note: {}", b.note);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            id,
            until,
            drop_existing,
            via_api,
            wait,
            yes,
        } => {
            let until = match until {
                Some(u) => {
                    // Years 1 to 9999, as the service accepts: nothing else becomes "no until".
                    let t = chrono::DateTime::parse_from_rfc3339(u.trim())
                        .ok()
                        .filter(|t| t.timestamp() >= -62_135_596_800)
                        .ok_or_else(|| {
                            ClientError::Local(format!(
                                "--until: {u:?} is not an RFC 3339 time of years 1 to 9999 (e.g. 2026-11-24T10:15:00Z)"
                            ))
                        })?;
                    Some(prost_types::Timestamp {
                        seconds: t.timestamp(),
                        nanos: t.timestamp_subsec_nanos() as i32,
                    })
                }
                None => None,
            };
            let id = if yes {
                id
            } else {
                confirm(&mut client, id, until.as_ref(), drop_existing).await?
            };
            let req = pb::RestoreRequest {
                backup_id: id,
                until,
                drop_existing,
                via_api,
                wait,
            };
            let r = if wait {
                restore_and_watch(&mut client, req).await?
            } else {
                client.restore(req).await?
            };
            match pb::OperationState::try_from(r.state) {
                Ok(pb::OperationState::Failed) => {
                    eprintln!(
                        "backupctl: error: restore of backup {} failed: {}",
                        r.backup_id, r.error
                    );
                    Ok(ExitCode::from(1))
                }
                Ok(pb::OperationState::Running) => {
                    println!(
                        "restore {} of backup {} started; follow it with `backupctl status`",
                        r.id, r.backup_id
                    );
                    Ok(ExitCode::SUCCESS)
                }
                _ => {
                    println!(
                        "restored backup {} into the {}: {} events",
                        r.backup_id,
                        sink_words(&r.sink),
                        r.event_count
                    );
                    for step in &r.next_steps {
                        println!("next: {step}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Drill { id, json } => {
            let r = client.drill(&id).await?;
            if json {
                let v = serde_json::json!({
                    "backup_id": r.backup_id, "ok": r.ok, "archive_events": r.archive_events,
                    "restored_events": r.restored_events, "live_events": r.live_events,
                    "restored_matches_archive": r.restored_matches_archive,
                    "live_matches_archive": r.live_matches_archive,
                    "events_digest": r.events_digest, "problems": r.problems,
                    "seconds": r.duration.map(|d| d.seconds as f64 + d.nanos as f64 / 1e9),
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            if r.ok {
                if !json {
                    println!(
                        "drill of backup {} ok: {} events restored into a scratch store match the archive and the live store (digest {})",
                        r.backup_id, r.restored_events, r.events_digest
                    );
                }
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "backupctl: error: drill of backup {} failed: {}",
                    r.backup_id,
                    r.problems.join("; ")
                );
                Ok(ExitCode::from(1))
            }
        }
        Command::Status { json } => {
            let s = client.get_status().await?;
            if json {
                let reach = |r: &Option<pb::Reachability>| {
                    r.as_ref().map(|r| serde_json::json!({"address": r.address, "reachable": r.reachable, "error": r.error}))
                };
                let v = serde_json::json!({
                    "version": s.version,
                    "last_success": s.last_success.as_ref().map(backup_json),
                    "last_failure": s.last_failure.as_ref().map(backup_json),
                    "running_backup": s.running_backup.as_ref().map(|b| {
                        let mut v = backup_json(b);
                        if let Some(p) = &b.progress { v["progress"] = serde_json::json!({"events": p.events, "bytes": p.bytes}); }
                        v
                    }),
                    "running_restore": s.running_restore.as_ref().map(restore_json),
                    "last_restore": s.last_restore.as_ref().map(restore_json),
                    "event_store": reach(&s.event_store),
                    "destination": reach(&s.destination),
                    "catalog_backups": s.catalog_backups,
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_status(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Asks on the terminal for the backup's id before a restore, after saying which backup it is
/// and what happens to the store. `latest` (without `until`) is resolved first, and the restore
/// then asks for exactly that backup, whatever completes meanwhile. Returns the id to restore;
/// refuses without a terminal.
async fn confirm(
    client: &mut BackupClient,
    id: String,
    until: Option<&prost_types::Timestamp>,
    drop_existing: bool,
) -> Result<String, ClientError> {
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Local(
            "refusing to restore without confirmation: run on a terminal or pass --yes".into(),
        ));
    }
    let backups = client.list_all(false).await?;
    let target = match (id.as_str(), until) {
        ("latest", None) => Some(
            backups
                .first()
                .cloned()
                .ok_or_else(|| ClientError::NotFound("no complete backup to restore".into()))?,
        ),
        ("latest", Some(_)) => None,
        (id, _) => backups.iter().find(|b| b.id == id).cloned(),
    };
    let what = match &target {
        Some(b) => {
            // An incremental restores its whole chain: say what that holds.
            let chain: Vec<&pb::Backup> = std::iter::successors(Some(b), |x| {
                backups
                    .iter()
                    .find(|p| !x.parent_id.is_empty() && p.id == x.parent_id)
            })
            .take(backups.len())
            .collect();
            let events: u64 = chain.iter().map(|l| l.event_count).sum();
            let last = chain
                .iter()
                .filter_map(|l| l.last_event_time.as_ref())
                .max_by_key(|t| (t.seconds, t.nanos));
            format!(
                "backup {} ({}{}: {events} events, last event {})",
                b.id,
                kind_name(b.kind),
                if chain.len() > 1 {
                    format!(", with the {} backups of its chain", chain.len())
                } else {
                    String::new()
                },
                time(last)
            )
        }
        None if id == "latest" => "the backup the service picks for that time (latest)".into(),
        None => format!("backup {id}"),
    };
    eprintln!(
        "Restoring {what} into the EventStore{}{}.",
        until
            .map(|u| format!(", the events up to {}", time(Some(u))))
            .unwrap_or_default(),
        if drop_existing {
            ", REPLACING every event it holds now"
        } else {
            " (it must be empty)"
        }
    );
    let expected = target.map(|b| b.id).unwrap_or(id);
    eprint!("Type {expected} to confirm: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| ClientError::Local(e.to_string()))?;
    if line.trim() != expected {
        return Err(ClientError::Local(
            "confirmation did not match the backup id; nothing was restored".into(),
        ));
    }
    Ok(expected)
}

fn print_status(s: &pb::GetStatusResponse) {
    println!("service version   {}", s.version);
    match &s.last_success {
        Some(b) => println!(
            "last success      {} at {} ({} events, {})",
            b.id,
            time(b.completed_at.as_ref()),
            b.event_count,
            human_bytes(b.bytes)
        ),
        None => println!("last success      none"),
    }
    match &s.last_failure {
        Some(b) => println!(
            "last failure      {} at {}: {}",
            b.id,
            time(b.completed_at.as_ref()),
            b.error
        ),
        None => println!("last failure      none"),
    }
    if let Some(b) = &s.running_backup {
        match b.progress {
            Some(p) => println!(
                "running           backup {} ({} events, {} so far)",
                b.id,
                p.events,
                human_bytes(p.bytes)
            ),
            None => println!(
                "running           backup {} (by {}, in another process sharing the catalog)",
                b.id, b.created_by
            ),
        }
    }
    if let Some(r) = &s.running_restore {
        match r.progress {
            Some(p) => println!(
                "running           restore {} of backup {} into the {} ({} events, {} of archive read so far)",
                r.id,
                r.backup_id,
                sink_words(&r.sink),
                p.events,
                human_bytes(p.bytes)
            ),
            None => println!(
                "running           restore {} of backup {} (by {}, in another process sharing the catalog)",
                r.id, r.backup_id, r.created_by
            ),
        }
    }
    if s.running_backup.is_none() && s.running_restore.is_none() {
        println!("running           nothing");
    }
    match &s.last_restore {
        Some(r) => match pb::OperationState::try_from(r.state) {
            Ok(pb::OperationState::Succeeded) => println!(
                "last restore      {} of backup {} at {}: {} events into the {}{}",
                r.id,
                r.backup_id,
                time(r.completed_at.as_ref()),
                r.event_count,
                sink_words(&r.sink),
                r.until
                    .as_ref()
                    .map(|u| format!(", up to {}", time(Some(u))))
                    .unwrap_or_default()
            ),
            Ok(pb::OperationState::Failed) => println!(
                "last restore      {} of backup {} FAILED at {}: {}",
                r.id,
                r.backup_id,
                time(r.completed_at.as_ref()),
                r.error
            ),
            _ => println!(
                "last restore      {} of backup {}: running since {}",
                r.id,
                r.backup_id,
                time(r.started_at.as_ref())
            ),
        },
        None => println!("last restore      none"),
    }
    for (name, r) in [
        ("event store", &s.event_store),
        ("destination", &s.destination),
    ] {
        if let Some(r) = r {
            if r.reachable {
                println!("{name:<17} {} reachable", r.address);
            } else {
                println!("{name:<17} {} UNREACHABLE: {}", r.address, r.error);
            }
        }
    }
    println!("catalog           {} complete backups", s.catalog_backups);
}

/// Runs CreateBackup{wait} while showing its progress.
async fn create_and_watch(
    client: &mut BackupClient,
    incremental: bool,
) -> Result<pb::Backup, ClientError> {
    let mut creator = client.clone();
    let call = tokio::spawn(async move { creator.create_backup(true, incremental).await });
    watch(client, call, "backup", |s| {
        s.running_backup.as_ref().map(|b| {
            let p = b.progress.unwrap_or_default();
            format!(
                "backup {}: {} events, {} written",
                b.id,
                p.events,
                human_bytes(p.bytes)
            )
        })
    })
    .await
}

/// Runs Restore{wait} while showing its progress.
async fn restore_and_watch(
    client: &mut BackupClient,
    req: pb::RestoreRequest,
) -> Result<pb::Restore, ClientError> {
    let mut restorer = client.clone();
    let call = tokio::spawn(async move { restorer.restore(req).await });
    watch(client, call, "restore", |s| {
        s.running_restore.as_ref().map(|r| {
            let p = r.progress.unwrap_or_default();
            format!(
                "restore of backup {}: {} events, {} of archive read",
                r.backup_id,
                p.events,
                human_bytes(p.bytes)
            )
        })
    })
    .await
}

/// Waits for `call` while showing what `progress` makes of GetStatus: a spinner on a terminal, a
/// line every 10 s otherwise. Ctrl-C (or SIGTERM) stops waiting, not the operation: the service
/// runs it on, and the error line says so.
async fn watch<T: Send + 'static>(
    client: &mut BackupClient,
    call: tokio::task::JoinHandle<Result<T, ClientError>>,
    what: &str,
    progress: impl Fn(&pb::GetStatusResponse) -> Option<String>,
) -> Result<T, ClientError> {
    let mut shown = term::Progress::new();
    let stop = term::stop_signal();
    tokio::pin!(stop);
    while !call.is_finished() {
        tokio::select! {
            () = tokio::time::sleep(term::TICK) => {}
            sig = &mut stop => {
                shown.finish();
                return Err(ClientError::Local(format!(
                    "{sig}: stopped waiting; the {what} goes on in the service (`backupctl status` follows it)"
                )));
            }
        }
        shown.tick(client.get_status().await.ok().as_ref().and_then(&progress));
    }
    shown.finish();
    call.await
        .map_err(|e| ClientError::Local(format!("{what} call failed: {e}")))?
}
