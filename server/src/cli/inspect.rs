//! `backup-server inspect`: the successor of Monoskope's `decrypt`, for a whole archive.

use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use serde_json::json;

use super::KeyArgs;
use crate::archive::{ArchiveReader, Footer, Header, Record};
use crate::ops::secrets;

/// `backup-server inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Archive file to read.
    pub path: PathBuf,
    /// Print the header and the (checked) footer as one JSON object instead of the events.
    #[arg(long)]
    pub summary: bool,
    /// Where keys come from.
    #[command(flatten)]
    pub keys: KeyArgs,
}

pub use crate::time::rfc3339;

/// One event as a JSON object (the `inspect` line format, documented in the README).
pub fn record_json(r: &Record) -> serde_json::Value {
    let mut v = json!({
        "aggregate_type": r.aggregate_type,
        "aggregate_id": r.aggregate_id,
        "aggregate_version": r.aggregate_version,
        "event_type": r.event_type,
        "data": base64::engine::general_purpose::STANDARD.encode(&r.data),
        "metadata": r.metadata,
        "timestamp": rfc3339(r.timestamp.as_ref()),
    });
    if !r.event_id.is_empty() {
        v["event_id"] = json!(r.event_id);
    }
    v
}

/// Header and footer as one JSON object.
pub fn summary_json(h: &Header, key_id: &str, f: &Footer, bytes: u64) -> serde_json::Value {
    json!({
        "format_version": format!("{}.{}", h.format_major, h.format_minor),
        "backup_id": h.backup_id,
        "parent_id": h.parent_id,
        "kind": h.kind,
        "parent_sha256": h.parent_sha256.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "created_at": rfc3339(h.created_at.as_ref()),
        "compression": h.compression,
        "protection": h.protection,
        "key_id": key_id,
        "chunk_size": h.chunk_size,
        "event_count": f.event_count,
        "first_timestamp": rfc3339(f.first_timestamp.as_ref()),
        "last_timestamp": rfc3339(f.last_timestamp.as_ref()),
        "events_sha256": f.events_sha256.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "data_chunks": f.data_chunks,
        "record_bytes": f.record_bytes,
        "archive_bytes": bytes,
    })
}

pub(super) fn run(a: InspectArgs) -> anyhow::Result<()> {
    let sources = a.keys.sources(&Default::default());
    secrets::check_sources(sources.key_files_from, None, None).map_err(super::usage)?;
    let keys = secrets::load_keys(&sources.key_files, &sources.identity_files)?;
    let file = std::fs::File::open(&a.path)
        .with_context(|| format!("cannot open {}", a.path.display()))?;
    // An archive's key file lies beside it (`<archive>.keys`) at a directory destination.
    let key_file_path = {
        let mut p = a.path.clone().into_os_string();
        p.push(crate::destination::layout::KEYS_EXT);
        std::path::PathBuf::from(p)
    };
    let key_file = match std::fs::read(&key_file_path) {
        Ok(bytes) => Some(
            crate::archive::envelope::parse_key_file(&bytes)
                .with_context(|| format!("{}", key_file_path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot read {}", key_file_path.display()))
            )
        }
    };
    let mut reader = ArchiveReader::open_with_key_file(
        BufReader::with_capacity(1 << 20, file),
        &keys,
        key_file.as_ref(),
    )
    .with_context(|| format!("{}", a.path.display()))?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if a.summary {
        let footer = reader
            .verify_to_end()
            .with_context(|| format!("{}", a.path.display()))?;
        let v = summary_json(
            reader.header(),
            reader.key_id(),
            &footer,
            reader.bytes_read(),
        );
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        // Events are printed as their chunk authenticates; on damage the error follows the
        // events of the intact prefix and the exit code is 1.
        while let Some(r) = reader
            .next_record()
            .with_context(|| format!("{}", a.path.display()))?
        {
            serde_json::to_writer(&mut out, &record_json(&r))?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
