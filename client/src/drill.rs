//! `backupctl drill`: restore a backup into a scratch store and compare.

use std::process::ExitCode;

use monoskope_backup_client::{BackupClient, ClientError};

/// Runs `drill`.
pub(crate) async fn run(
    client: &mut BackupClient,
    id: &str,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let r = client.drill(id).await?;
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
