//! `backup-server rewrap`: key rotation without re-encrypting (engine::rewrap).

use anyhow::bail;

use super::settings::CommonArgs;

/// `backup-server rewrap`.
#[derive(Debug, clap::Args)]
pub struct RewrapArgs {
    /// Shared options. Reads with every --key-file, BACKUP_PASSPHRASE and --identity-file;
    /// wraps to --recipient-file when given, else to the first key of the first --key-file.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Backup id, a unique prefix of one (e.g. 20261206T16), or `latest`.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Every complete backup.
    #[arg(long)]
    pub all: bool,
    /// Then drop every other wrap, so that only the new key or recipients read the backups
    /// (a format 1.0 archive keeps the wrap it holds itself, which is said).
    #[arg(long)]
    pub remove_old: bool,
    /// Print one JSON report per backup.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(a: RewrapArgs) -> anyhow::Result<()> {
    let settings = a.common.resolve_rewrap()?;
    let Some(to) = settings.protection.clone() else {
        bail!("rewrap needs the key to wrap to: --recipient-file, or --key-file (its first key)");
    };
    if matches!(to, crate::archive::Protection::Unencrypted) {
        bail!("rewrap wraps data keys to a key; --no-encryption has none");
    }
    let dest = settings.destination().await?;
    let targets = if a.all {
        crate::destination::manifest::list_complete(dest.as_ref()).await?
    } else {
        let id = a.id.as_deref().unwrap_or("latest");
        crate::engine::verify::check_id(id).map_err(|e| super::usage(e.to_string()))?;
        vec![crate::engine::verify::resolve(dest.as_ref(), id).await?]
    };
    if targets.is_empty() {
        bail!("no complete backup at {}", dest.url());
    }
    let (mut done, mut failed) = (0, 0);
    for m in &targets {
        match crate::engine::rewrap::rewrap(dest.as_ref(), &settings.keys, &to, m, a.remove_old)
            .await
        {
            Ok(r) => {
                done += 1;
                if a.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let what = if r.changed { "rewrapped" } else { "unchanged" };
                    let still = if r.still_open_with.is_empty() {
                        String::new()
                    } else {
                        format!("; still opens with {}", r.still_open_with.join(", "))
                    };
                    println!("{what:<10} {} → {} {}{still}", r.id, r.key_kind, r.key_id);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!(
                    "FAILED     {}: {}",
                    m.id,
                    monoskope_backup_client::error_line(e.as_ref())
                );
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} backups could not be rewrapped ({done} were); run it again: a rewrap finishes what an earlier one left", targets.len());
    }
    Ok(())
}
