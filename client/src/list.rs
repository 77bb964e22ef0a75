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
        print_json(&v);
    } else if backups.is_empty() {
        println!("no backups");
    } else {
        println!(
            "{:<30} {:<11} {:<30} {:<10} {:>10} {:>10}  {:<20}  {:<20}  {:<31}  LAST EVENT",
            "ID", "KIND", "PARENT", "STATE", "EVENTS", "SIZE", "CREATED", "KEY", ""
        );
        let mut i = 0;
        while i < backups.len() {
            // A run of continuous segments (newest first) is one line: the window they cover.
            let run = backups[i..]
                .iter()
                .take_while(|b| {
                    !all && (kind_name(b.kind) == "segment" || b.note == SEGMENT_NOTE)
                        && b.error.is_empty()
                })
                .count();
            if run > 1 {
                let (newest, oldest) = (&backups[i], &backups[i + run - 1]);
                let events: u64 = backups[i..i + run].iter().map(|b| b.event_count).sum();
                let bytes: u64 = backups[i..i + run].iter().map(|b| b.bytes).sum();
                println!(
                    "{:<30} {:<11} {:<30} {:<10} {:>10} {:>10}  {:<20}  {:<20}  {:<31}  {}",
                    format!("{run} segments"),
                    "continuous",
                    oldest.parent_id,
                    state_name(newest.state),
                    events,
                    human_bytes(bytes),
                    time(oldest.created_at.as_ref()),
                    newest.key_kind,
                    key_column(&newest.key_id),
                    time(newest.last_event_time.as_ref())
                );
                println!(
                    "    restorable to any instant from {} to {} ({} … {}; --all or --json lists each)",
                    time(oldest.first_event_time.as_ref()),
                    time(newest.last_event_time.as_ref()),
                    oldest.id,
                    newest.id
                );
                i += run;
                continue;
            }
            let b = &backups[i];
            i += 1;
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

/// The note of a continuous segment written before segments had a kind of their own.
const SEGMENT_NOTE: &str = "continuous segment";

/// A key id for the list: the first recipient's id and how many more.
fn key_column(id: &str) -> String {
    let ids: Vec<&str> = id.split(',').filter(|s| !s.is_empty()).collect();
    match ids.as_slice() {
        [] => "-".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} +{}", rest.len()),
    }
}
