//! `backupctl status`: the last success and failure, what runs, the last restore, the peers.

use std::process::ExitCode;

use monoskope_backup_client::{human_bytes, json, pb, sink_words, BackupClient, ClientError};

use crate::show::*;

/// Runs `status`.
pub(crate) async fn run(client: &mut BackupClient, json: bool) -> Result<ExitCode, ClientError> {
    let s = client.get_status().await?;
    if json {
        let reach = |r: &Option<pb::Reachability>| {
            r.as_ref().map(|r| serde_json::json!({"address": r.address, "reachable": r.reachable, "error": r.error}))
        };
        let v = serde_json::json!({
            "version": s.version,
            "last_success": s.last_success.as_ref().map(backup_json),
            "last_failure": s.last_failure.as_ref().map(backup_json),
            "running_backup": s.running_backup.as_ref().map(backup_json),
            "running_restore": s.running_restore.as_ref().map(restore_json),
            "last_restore": s.last_restore.as_ref().map(restore_json),
            "event_store": reach(&s.event_store),
            "destination": reach(&s.destination),
            "catalog_backups": s.catalog_backups,
            "continuous": s.continuous.as_ref().map(|c| serde_json::json!({
                "lag_seconds": c.lag_seconds,
                "segments": c.segments,
                "earliest": json::time(c.earliest.as_ref()),
                "latest": json::time(c.latest.as_ref()),
            })),
            "copies": s.copies.iter().map(copy_json).collect::<Vec<_>>(),
        });
        print_json(&v);
    } else {
        print_status(&s);
    }
    Ok(ExitCode::SUCCESS)
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
    if let Some(c) = &s.continuous {
        let lag = if c.lag_seconds > 0.0 {
            format!("{:.1} s behind", c.lag_seconds)
        } else {
            "caught up".to_string()
        };
        println!(
            "continuous        {lag}, {} segments; restorable from {} to {}",
            c.segments,
            time(c.earliest.as_ref()),
            time(c.latest.as_ref())
        );
    }
    for c in &s.copies {
        println!("copy              {}", copy_words(c));
    }
}
