//! `backupctl list`: the backups, newest first, with a failed one's error and a note under
//! its row.

use std::process::ExitCode;

use monoskope_backup_client::{human_bytes, BackupClient, ClientError};

use crate::show::*;

/// Runs `list`.
pub(crate) async fn run(
    client: &mut BackupClient,
    json: bool,
    all: bool,
) -> Result<ExitCode, ClientError> {
    let backups = client.list_all(all).await?;
    if json {
        let v: Vec<_> = backups.iter().map(backup_json).collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if backups.is_empty() {
        println!("no backups");
    } else {
        println!(
            "{:<30} {:<11} {:<30} {:<10} {:>10} {:>10}  {:<20}  {:<20}  {:<31}  LAST EVENT",
            "ID", "KIND", "PARENT", "STATE", "EVENTS", "SIZE", "CREATED", "KEY", ""
        );
        for b in &backups {
            println!(
                "{:<30} {:<11} {:<30} {:<10} {:>10} {:>10}  {:<20}  {:<20}  {:<31}  {}",
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
                b.key_kind,
                key_column(&b.key_id),
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

/// A key id for the list: the first recipient's id and how many more.
fn key_column(id: &str) -> String {
    let ids: Vec<&str> = id.split(',').filter(|s| !s.is_empty()).collect();
    match ids.as_slice() {
        [] => "-".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} +{}", rest.len()),
    }
}
