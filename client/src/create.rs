//! `backupctl create`: start a backup; with `--wait`, follow it to its end.

use std::process::ExitCode;

use monoskope_backup_client::{human_bytes, pb, BackupClient, ClientError};

use crate::show::*;
use crate::watch::*;

/// Runs `create`.
pub(crate) async fn run(
    client: &mut BackupClient,
    wait: bool,
    incremental: bool,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let b = if wait {
        create_and_watch(client, incremental).await?
    } else {
        client.create_backup(false, incremental).await?
    };
    if json {
        print_json(&backup_json(&b));
        return Ok(match pb::OperationState::try_from(b.state) {
            Ok(pb::OperationState::Failed) => ExitCode::from(1),
            _ => ExitCode::SUCCESS,
        });
    }
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
