//! Commands for the benchmark run (`bench/run`, docs/BENCHMARKS.md): `generate` loads the
//! deterministic Monoskope-like events straight into the events table, `bench-primitives`
//! measures zstd and AES-256-GCM alone on the same bytes.

use std::io::Read;
use std::time::Instant;

use anyhow::Context;

/// `backup-server generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Events to generate (versions 1..n of `events / 100` aggregates).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Number of aggregates the events are spread over (default: events / 100, i.e. 100
    /// versions each).
    #[arg(long)]
    pub aggregates: Option<u64>,
    /// The events table to load (`postgres://…`), which must be empty.
    #[arg(long, env = "BACKUP_EVENTS_DB")]
    pub events_db: String,
}

/// `backup-server bench-primitives`.
#[derive(Debug, clap::Args)]
pub struct PrimitivesArgs {
    /// The bytes to compress and encrypt (e.g. `COPY … TO STDOUT (FORMAT binary)` of the table).
    pub file: std::path::PathBuf,
    /// zstd level.
    #[arg(long, default_value_t = crate::archive::DEFAULT_COMPRESSION_LEVEL)]
    pub level: i32,
}

pub(super) async fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let table = crate::sink::table::EventsTable::connect(&a.events_db).await?;
    // Batches of records: a few in flight keep memory flat.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let n = a.events;
    let aggregates = a.aggregates.unwrap_or(n / 100).max(1);
    let start = 1_700_000_000;
    let producer = tokio::spawn(async move {
        use crate::sink::table::{CopyRows, ROW_BATCH_BYTES};
        let mut batch = CopyRows::with_capacity(ROW_BATCH_BYTES);
        for e in crate::devstore::sample::events(n, aggregates, start, 42) {
            let record = crate::source::record_from_event(e);
            if let Err(e) = batch.push(&crate::archive::RecordView::of(&record)) {
                let _ = tx.send(Err(e)).await;
                return;
            }
            if batch.bytes() >= ROW_BATCH_BYTES
                && tx.send(Ok(Some(std::mem::take(&mut batch)))).await.is_err()
            {
                return;
            }
        }
        if !batch.is_empty() && tx.send(Ok(Some(batch))).await.is_err() {
            return;
        }
        let _ = tx.send(Ok(None)).await;
    });
    let t = Instant::now();
    let written = table.restore(rx, false).await?;
    producer.await?;
    println!(
        "generated {written} events into event_records in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(super) fn primitives(a: PrimitivesArgs) -> anyhow::Result<()> {
    use aes_gcm::aead::{AeadInOut, KeyInit};
    let mut data = Vec::new();
    std::fs::File::open(&a.file)
        .with_context(|| format!("cannot open {}", a.file.display()))?
        .read_to_end(&mut data)?;
    let chunk = 1 << 20;
    let t = Instant::now();
    let mut compressed = 0usize;
    for c in data.chunks(chunk) {
        compressed += zstd::bulk::compress(c, a.level)?.len();
    }
    let zstd_s = t.elapsed().as_secs_f64();
    // The archive writer's compressor at the same level (its tuned match finder at the default).
    let mut writer_zstd = crate::archive::chunk_compressor(a.level, true)?;
    let t = Instant::now();
    let mut writer_compressed = 0usize;
    for c in data.chunks(chunk) {
        writer_compressed += writer_zstd.compress(c)?.len();
    }
    let writer_zstd_s = t.elapsed().as_secs_f64();
    let key = aes_gcm::Aes256Gcm::new_from_slice(&[7u8; 32]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut buf = Vec::with_capacity(chunk + 16);
    let t = Instant::now();
    for (i, c) in data.chunks(chunk).enumerate() {
        buf.clear();
        buf.extend_from_slice(c);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        key.encrypt_in_place(&nonce.into(), b"", &mut buf)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let aes_s = t.elapsed().as_secs_f64();
    let mb = data.len() as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({
            "bytes": data.len(), "zstd_level": a.level, "zstd_seconds": zstd_s,
            "zstd_mb_per_s": mb / zstd_s, "zstd_ratio": data.len() as f64 / compressed.max(1) as f64,
            "writer_zstd_seconds": writer_zstd_s, "writer_zstd_mb_per_s": mb / writer_zstd_s,
            "writer_zstd_ratio": data.len() as f64 / writer_compressed.max(1) as f64,
            "aes_gcm_seconds": aes_s, "aes_gcm_mb_per_s": mb / aes_s,
        })
    );
    Ok(())
}
