//! `backupctl restore`: say which backup, ask for its id on a terminal, restore it, and with
//! `--wait` follow it to its end.

use std::io::IsTerminal;
use std::process::ExitCode;

use monoskope_backup_client::{pb, sink_words, BackupClient, ClientError};

use crate::show::*;
use crate::watch::*;

/// Runs `restore`.
pub(crate) async fn run(
    client: &mut BackupClient,
    id: String,
    until: Option<String>,
    drop_existing: bool,
    via_api: bool,
    wait: bool,
    yes: bool,
) -> Result<ExitCode, ClientError> {
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
        confirm(client, id, until.as_ref(), drop_existing).await?
    };
    let req = pb::RestoreRequest {
        backup_id: id,
        until,
        drop_existing,
        via_api,
        wait,
    };
    let r = if wait {
        restore_and_watch(client, req).await?
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

// Asks on the terminal for the backup's id before a restore, after saying which backup it is
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
