//! `backupctl describe`: one backup in full, as Velero's `describe` shows one — its chain (what a
//! restore of it reads), size, events and their time range, key, lock, where it is, and the
//! copy destinations' state.

use std::process::ExitCode;

use monoskope_backup_client::{human_bytes, json, pb, BackupClient, ClientError};

use crate::show::*;

/// The backup `id` (`latest`, a whole id, or a unique prefix of one) among `all`.
pub(crate) fn find<'a>(all: &'a [pb::Backup], id: &str) -> Result<&'a pb::Backup, ClientError> {
    let complete = || {
        all.iter()
            .filter(|b| b.state == pb::OperationState::Succeeded as i32)
    };
    if id == "latest" {
        return complete()
            .max_by(|a, b| a.id.cmp(&b.id))
            .ok_or_else(|| ClientError::NotFound("no complete backup".into()));
    }
    if let Some(b) = all.iter().find(|b| b.id == id) {
        return Ok(b);
    }
    let matches: Vec<&pb::Backup> = all.iter().filter(|b| b.id.starts_with(id)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(ClientError::NotFound(format!(
            "no backup has an id starting with {id}"
        ))),
        many => Err(ClientError::Usage(format!(
            "{id} is ambiguous: {} backups start with it ({}); give more of the id",
            many.len(),
            many.iter()
                .take(5)
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The chain of `b`, full backup first.
fn chain<'a>(all: &'a [pb::Backup], b: &'a pb::Backup) -> Vec<&'a pb::Backup> {
    let mut out: Vec<&pb::Backup> = std::iter::successors(Some(b), |x| {
        all.iter()
            .find(|p| !x.parent_id.is_empty() && p.id == x.parent_id)
    })
    .take(all.len())
    .collect();
    out.reverse();
    out
}

/// Runs `describe`.
pub(crate) async fn run(
    client: &mut BackupClient,
    id: &str,
    as_json: bool,
) -> Result<ExitCode, ClientError> {
    let all = client.list_all(true).await?;
    let b = find(&all, id)?;
    let links = chain(&all, b);
    let status = client.get_status().await?;
    if as_json {
        let check = |c: &Option<pb::Check>| {
            c.as_ref().map(|c| {
                serde_json::json!({
                    "checked_at": json::time(c.checked_at.as_ref()),
                    "ok": c.ok,
                    "detail": c.detail,
                })
            })
        };
        print_json(&serde_json::json!({
            "backup": backup_json(b),
            "last_drill": check(&b.last_drill),
            "last_verify": check(&b.last_verify),
            "chain": links.iter().map(|l| backup_json(l)).collect::<Vec<_>>(),
            "copies": status.copies.iter().map(copy_json).collect::<Vec<_>>(),
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let row = |k: &str, v: String| println!("{k:<13}{v}");
    row(
        "Backup",
        format!("{} ({}, {})", b.id, kind_name(b.kind), json::state(b.state)),
    );
    if !b.note.is_empty() {
        row("Note", b.note.clone());
    }
    if !b.error.is_empty() {
        row("Error", b.error.clone());
    }
    row(
        "Created",
        format!(
            "{} by {}; completed {}",
            time(b.created_at.as_ref()),
            if b.created_by.is_empty() {
                "-"
            } else {
                &b.created_by
            },
            time(b.completed_at.as_ref())
        ),
    );
    row(
        "Events",
        format!(
            "{} (from {} to {})",
            b.event_count,
            time(b.first_event_time.as_ref()),
            time(b.last_event_time.as_ref())
        ),
    );
    row(
        "Size",
        format!(
            "{} (SHA-256 {})",
            human_bytes(b.bytes),
            if b.sha256.is_empty() { "-" } else { &b.sha256 }
        ),
    );
    row(
        "Key",
        format!(
            "{} ({}), archive format {}",
            if b.key_id.is_empty() { "-" } else { &b.key_id },
            if b.key_kind.is_empty() {
                "-"
            } else {
                &b.key_kind
            },
            if b.format_version.is_empty() {
                "-"
            } else {
                &b.format_version
            }
        ),
    );
    row(
        "Lock",
        match &b.locked_until {
            Some(t) => format!("objects locked until {}", time(Some(t))),
            None => "none (no S3 Object Lock)".into(),
        },
    );
    row("Location", b.location.clone());
    let events: u64 = links.iter().map(|l| l.event_count).sum();
    let whole = links.first().is_some_and(|l| l.parent_id.is_empty());
    row(
        "Chain",
        format!(
            "{} backup(s), full first; a restore of it reads {events} events{}",
            links.len(),
            if whole {
                ""
            } else {
                " — INCOMPLETE: its full backup is not in the catalog"
            }
        ),
    );
    for l in &links {
        println!(
            "{:<13}  {} {:<11} {:>8} events  {}",
            "",
            l.id,
            kind_name(l.kind),
            l.event_count,
            human_bytes(l.bytes)
        );
    }
    if status.copies.is_empty() {
        row("Copies", "none configured (backup.copies)".into());
    }
    for c in &status.copies {
        row("Copies", copy_words(c));
    }
    let check = |c: &Option<pb::Check>, never: &str| match c {
        Some(c) => format!(
            "{} at {}: {}",
            if c.ok { "ok" } else { "FAILED" },
            time(c.checked_at.as_ref()),
            c.detail
        ),
        None => never.to_string(),
    };
    row(
        "Last drill",
        check(
            &b.last_drill,
            &format!(
                "never (`backupctl drill {}` restores it into a scratch store and compares)",
                b.id
            ),
        ),
    );
    row(
        "Last verify",
        check(
            &b.last_verify,
            &format!("never by the service (`backup-server verify {}` reads every byte at the destination)", b.id),
        ),
    );
    Ok(ExitCode::SUCCESS)
}
