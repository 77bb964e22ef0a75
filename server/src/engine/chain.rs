//! Chains of backups: the chain of a backup (its full ancestor first), and the parent an
//! incremental builds on.

use monoskope_backup_client::error_line;
use std::sync::Arc;

use super::{backup, watermark, EngineConfig};

/// The newest complete backup, if its chain is whole, shorter than `fullEvery` incrementals and
/// its watermark readable; otherwise why an incremental backup cannot build on it.
pub(super) async fn choose_parent(
    cfg: &EngineConfig,
    segment: bool,
) -> Result<backup::Parent, String> {
    if matches!(
        cfg.protection,
        Some(crate::archive::Protection::Recipients(_))
    ) && cfg.keys.identities.is_empty()
    {
        return Err("a write-only service (recipients, no identity) cannot read the chain's watermark an incremental builds on".into());
    }
    let dest = cfg.destination.as_ref();
    let all = match crate::destination::manifest::list_complete(dest).await {
        Ok(all) => all,
        // A new directory destination: this is its first backup.
        Err(e) if is_not_created(&e) => Vec::new(),
        Err(e) => {
            return Err(format!(
                "cannot list the destination: {}",
                error_line(e.as_ref())
            ))
        }
    };
    let newest = all
        .first()
        .cloned()
        .ok_or_else(|| "there is no complete backup to build on".to_string())?;
    let chain = chain_of(&all, &newest)
        .map_err(|e| format!("the chain of {} is damaged: {e}", newest.id))?;
    let held = chain.len() - 1;
    // Continuous segments continue the chain until the next scheduled full backup.
    if !segment && held >= cfg.full_every as usize {
        return Err(format!(
            "the newest chain holds {held} incrementals (fullEvery is {})",
            cfg.full_every
        ));
    }
    let key = newest.watermark_key.clone().ok_or_else(|| {
        format!(
            "backup {} has no watermark (it was made before incremental backups)",
            newest.id
        )
    })?;
    let watermark = watermark::Watermark::load(dest, &cfg.keys, &key, &newest.id)
        .await
        .map_err(|e| {
            format!(
                "cannot read the watermark of {}: {}",
                newest.id,
                error_line(e.as_ref())
            )
        })?;
    Ok(backup::Parent {
        manifest: newest,
        watermark: Arc::new(watermark),
    })
}

/// Whether `e` says the destination's directory does not exist yet (nothing was ever written
/// there): for writers, an empty destination.
pub fn is_not_created(e: &anyhow::Error) -> bool {
    crate::destination::not_created(e.chain())
}

/// The chain of `m` among `all` complete backups: its full ancestor first, `m` last. Fails on
/// a missing link, a cycle, or a parent that is not older.
pub fn chain_of(
    all: &[crate::destination::manifest::Manifest],
    m: &crate::destination::manifest::Manifest,
) -> Result<Vec<crate::destination::manifest::Manifest>, String> {
    let mut chain = vec![m.clone()];
    let mut cur = m.clone();
    while crate::destination::manifest::has_parent(&cur.kind) {
        let pid = cur
            .parent_id
            .clone()
            .ok_or_else(|| format!("incremental backup {} names no parent", cur.id))?;
        if pid >= cur.id || chain.len() > all.len() {
            return Err(format!(
                "backup {} names parent {pid}, which is not older",
                cur.id
            ));
        }
        let p =
            all.iter().find(|x| x.id == pid).cloned().ok_or_else(|| {
                format!("link {pid} (parent of {}) is missing or incomplete", cur.id)
            })?;
        chain.push(p.clone());
        cur = p;
    }
    chain.reverse();
    Ok(chain)
}
