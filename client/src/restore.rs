//! `backupctl restore`: have the service check everything a restore checks before writing, say
//! which backup goes where, ask for its id on a terminal, restore it, and with `--wait` follow it
//! to its end.

use std::io::IsTerminal;
use std::process::ExitCode;

use monoskope_backup_client::{pb, sink_words, BackupClient, ClientError};

use crate::show::*;
use crate::watch::*;

/// The switches of `restore`.
pub(crate) struct Flags {
    pub json: bool,
    pub drop_existing: bool,
    pub via_api: bool,
    pub wait: bool,
    pub yes: bool,
    pub dry_run: bool,
}

/// Runs `restore`.
pub(crate) async fn run(
    client: &mut BackupClient,
    id: String,
    until: Option<String>,
    flags: Flags,
) -> Result<ExitCode, ClientError> {
    let Flags {
        json,
        drop_existing,
        via_api,
        wait,
        yes,
        dry_run,
    } = flags;
    let until = match until {
        Some(u) => {
            // Years 1 to 9999, as the service accepts: nothing else becomes "no until".
            let t = chrono::DateTime::parse_from_rfc3339(u.trim())
                    .ok()
                    .filter(|t| t.timestamp() >= -62_135_596_800)
                    .ok_or_else(|| {
                        ClientError::Usage(format!(
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
    let mut req = pb::RestoreRequest {
        backup_id: id,
        until,
        drop_existing,
        via_api,
        wait,
        dry_run: false,
    };
    if dry_run || !yes {
        // Every refusal first: nothing is asked that the service would refuse anyway.
        let plan = client.plan_restore(req.clone()).await?;
        if dry_run && json {
            print_json(&monoskope_backup_client::json::RestorePlan::from(&plan));
            return Ok(ExitCode::SUCCESS);
        }
        if dry_run {
            for l in &plan.lines {
                println!("{l}");
            }
            println!("nothing was written (--dry-run)");
            return Ok(ExitCode::SUCCESS);
        }
        // Exactly the backup confirmed, whatever completes meanwhile.
        req.backup_id = confirm(&plan)?;
    }
    let r = if wait {
        restore_and_watch(client, req).await?
    } else {
        client.restore(req).await?
    };
    if json {
        print_json(&restore_json(&r));
        return Ok(match pb::OperationState::try_from(r.state) {
            Ok(pb::OperationState::Failed) => ExitCode::from(1),
            _ => ExitCode::SUCCESS,
        });
    }
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

/// Asks on the terminal, after every check the service makes before writing (so a refusal needs
/// no answer), naming the backup, its chain and the target with its event count, for the id of
/// the backup that will be restored (`latest` resolved). Refuses without a terminal.
fn confirm(plan: &pb::RestorePlan) -> Result<String, ClientError> {
    let id = plan.chain.last().cloned().unwrap_or_default();
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(format!(
            "refusing to restore backup {id} into {} without confirmation: run on a terminal or pass --yes",
            plan.target
        )));
    }
    for l in &plan.lines {
        eprintln!("  {l}");
    }
    let what = if plan.existing_events > 0 {
        format!(
            "REPLACES the {} events of {}",
            plan.existing_events, plan.target
        )
    } else {
        format!("writes into {} (empty now)", plan.target)
    };
    eprint!("This restore {what}. Type the backup id ({id}) to go on: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| ClientError::Local(e.to_string()))?;
    if line.trim() != id {
        return Err(ClientError::Local(
            "confirmation did not match the backup id; nothing was restored".into(),
        ));
    }
    Ok(id)
}
