//! Writes an archive: records → length-delimited protobuf → ~1 MiB chunks → zstd → AES-256-GCM
//! STREAM (or the SHA-256 chain) → frames, in constant memory.

use std::io::Write;

use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use monoskope_backup_api::archive::v1::{Footer, Header, KeyEnvelope, KeyFile, Record};

use super::envelope;
use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::encoded::Batch;
use super::error::ArchiveError;
use super::format::*;
use super::keys::Protection;

/// What a new archive says about itself.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// The backup's id.
    pub backup_id: String,
    /// The parent backup of an incremental backup.
    pub parent_id: Option<String>,
    /// "full", "incremental", "segment" or "watermark".
    pub kind: String,
    /// SHA-256 of the parent's archive object, which a continuous segment (and an incremental
    /// compacted from segments) carries in its authenticated header (format 1.2).
    pub parent_sha256: Option<[u8; 32]>,
    /// Creation time.
    pub created_at: prost_types::Timestamp,
    /// zstd level.
    pub compression_level: i32,
    /// Whether the default level uses the match finder tuned for event records ([`chunk_compressor`];
    /// on unless bytes written before it must be reproduced).
    pub tuned_match_finder: bool,
    /// Uncompressed bytes per chunk.
    pub chunk_size: u32,
    /// Encryption.
    pub protection: Protection,
    /// Whether the data key's wraps go into the archive's key file ([`ArchiveWriter::key_file`],
    /// stored beside the archive as `<archive>.keys`; format 1.1) instead of the archive, so that
    /// a rewrap can replace them without rewriting the archive.
    pub key_file: bool,
}

/// zstd level used unless configured. At this level the writer also sets the match finder
/// that fits event records in 1 MiB chunks (see [`chunk_compressor`]).
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// A zstd compressor for chunks at `level`. At [`DEFAULT_COMPRESSION_LEVEL`] it uses zstd's
/// level-3 strategy (`dfast`) with a minimum match of 7 bytes and small tables (hash log 14,
/// chain log 12): on Monoskope-like records (docs/BENCHMARKS.md) this compresses 3% smaller
/// than plain level 3 and about 1.8× faster, because 5- and 6-byte matches inside random ids
/// and numbers cost more to code than they save, and the small tables stay in cache. Other
/// levels are zstd's own. Only the compressor changes: any zstd decoder reads the chunks.
pub fn chunk_compressor(
    level: i32,
    tuned: bool,
) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::{CParameter, Strategy};
    let mut c = zstd::bulk::Compressor::new(level)?;
    if tuned && level == DEFAULT_COMPRESSION_LEVEL {
        c.set_parameter(CParameter::Strategy(Strategy::ZSTD_dfast))?;
        c.set_parameter(CParameter::MinMatch(7))?;
        c.set_parameter(CParameter::HashLog(14))?;
        c.set_parameter(CParameter::ChainLog(12))?;
    }
    Ok(c)
}

impl WriterOptions {
    /// Options with the defaults: full backup, now, zstd level 3, 1 MiB chunks.
    pub fn new(backup_id: impl Into<String>, protection: Protection) -> Self {
        let now = std::time::SystemTime::now();
        Self {
            backup_id: backup_id.into(),
            parent_id: None,
            kind: "full".into(),
            parent_sha256: None,
            created_at: prost_types::Timestamp::from(now),
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            tuned_match_finder: true,
            chunk_size: DEFAULT_CHUNK_SIZE,
            protection,
            key_file: false,
        }
    }
}

/// Footer accumulator: counts, time range and the digest of the records.
#[derive(Default)]
pub(crate) struct Tally {
    pub count: u64,
    pub first: Option<prost_types::Timestamp>,
    pub last: Option<prost_types::Timestamp>,
    pub digest: Sha256,
    pub record_bytes: u64,
}

fn ts_key(t: &prost_types::Timestamp) -> (i64, i32) {
    (t.seconds, t.nanos)
}

impl Tally {
    /// Counts one record given its timestamp and its length-delimited encoding.
    pub fn add(&mut self, timestamp: Option<&prost_types::Timestamp>, encoded: &[u8]) {
        self.count += 1;
        self.record_bytes += encoded.len() as u64;
        self.digest.update(encoded);
        let ts = timestamp.copied().unwrap_or_default();
        if self.first.as_ref().is_none_or(|f| ts_key(&ts) < ts_key(f)) {
            self.first = Some(ts);
        }
        if self.last.as_ref().is_none_or(|l| ts_key(&ts) > ts_key(l)) {
            self.last = Some(ts);
        }
    }

    pub fn footer(self, data_chunks: u64) -> Footer {
        Footer {
            event_count: self.count,
            first_timestamp: self.first,
            last_timestamp: self.last,
            events_sha256: self.digest.finalize().to_vec(),
            data_chunks,
            record_bytes: self.record_bytes,
        }
    }
}

/// Chunks the writer may have handed to the compression thread and not yet written: one
/// being compressed, one waiting. Bounds memory at a few chunk buffers.
const IN_FLIGHT: usize = 2;

/// One chunk for the compression thread: its plaintext and a buffer for the compressed body.
struct Job {
    plain: Vec<u8>,
    frame: Vec<u8>,
    flags: u8,
}

/// Compresses chunks in order on its own thread, so that encoding chunk n+1 and compressing
/// chunk n use two cores; sealing (AES-GCM or the SHA-256 chain) and writing stay on the
/// writer's thread, in order. The bytes are the same as doing it all inline.
fn compression_thread(
    level: i32,
    tuned: bool,
    jobs: std::sync::mpsc::Receiver<Job>,
    done: std::sync::mpsc::Sender<Result<Job, ArchiveError>>,
) {
    let mut compressor = match chunk_compressor(level, tuned) {
        Ok(c) => c,
        Err(e) => {
            let _ = done.send(Err(e.into()));
            return;
        }
    };
    while let Ok(mut job) = jobs.recv() {
        job.frame.clear();
        job.frame
            .resize(zstd::zstd_safe::compress_bound(job.plain.len()), 0);
        let compressed = compressor
            .compress_to_buffer(&job.plain, &mut job.frame[..])
            .map_err(ArchiveError::from)
            .map(|n| {
                job.frame.truncate(n);
                job
            });
        let failed = compressed.is_err();
        if done.send(compressed).is_err() || failed {
            return;
        }
    }
}

/// Streams records into an archive.
pub struct ArchiveWriter<W: Write> {
    out: W,
    guard: ChunkGuard,
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    done: std::sync::mpsc::Receiver<Result<Job, ArchiveError>>,
    compressor: Option<std::thread::JoinHandle<()>>,
    in_flight: usize,
    /// Counter of the next chunk to seal and write.
    sealed: u32,
    spare: Vec<Vec<u8>>,
    chunk_size: usize,
    buf: Vec<u8>,
    counter: u32,
    tally: Tally,
    record: Vec<u8>,
    written: u64,
    key_file: Option<KeyFile>,
}

impl<W: Write> std::fmt::Debug for ArchiveWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter")
            .field("chunks", &self.counter)
            .finish_non_exhaustive()
    }
}

impl<W: Write> ArchiveWriter<W> {
    /// Writes the prefix, header and key envelope, and prepares the chunk stream.
    pub fn new(mut out: W, opts: WriterOptions) -> Result<Self, ArchiveError> {
        let chunk_size = opts.chunk_size.clamp(4096, MAX_CHUNK_SIZE);
        let mut rng = rand::rngs::OsRng;
        let mut nonce_prefix = [0u8; 7];
        let encrypted = !matches!(opts.protection, Protection::Unencrypted);
        if encrypted {
            rng.fill_bytes(&mut nonce_prefix);
        }
        let minor = super::minor_for(
            &opts.protection,
            opts.key_file,
            opts.parent_sha256.is_some(),
        );
        let header = Header {
            format_major: u32::from(FORMAT_MAJOR),
            format_minor: u32::from(minor),
            backup_id: opts.backup_id,
            parent_id: opts.parent_id.unwrap_or_default(),
            created_at: Some(opts.created_at),
            compression: COMPRESSION_ZSTD.into(),
            protection: if encrypted {
                PROTECTION_AES
            } else {
                PROTECTION_SHA256
            }
            .into(),
            nonce_prefix: if encrypted {
                nonce_prefix.to_vec()
            } else {
                Vec::new()
            },
            chunk_size,
            kind: opts.kind,
            parent_sha256: opts.parent_sha256.map(|s| s.to_vec()).unwrap_or_default(),
        };
        let header_bytes = header.encode_to_vec();
        let mut prefix = Vec::with_capacity(16 + header_bytes.len());
        prefix.extend_from_slice(MAGIC);
        prefix.extend_from_slice(&FORMAT_MAJOR.to_be_bytes());
        prefix.extend_from_slice(&minor.to_be_bytes());
        prefix.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
        prefix.extend_from_slice(&header_bytes);

        let mut data_key = [0u8; 32];
        let mut key_file = None;
        let (envelope, sealer) = match &opts.protection {
            Protection::Unencrypted => (
                KeyEnvelope {
                    kdf: envelope::KDF_NONE.into(),
                    key_id: "none".into(),
                    ..Default::default()
                },
                ChunkGuard::Chain { prev: [0; 32] },
            ),
            protection => {
                rng.fill_bytes(&mut data_key);
                let wrapped = envelope::wrap(protection, &data_key, &prefix)?;
                let env = if opts.key_file {
                    // The archive names the key; its key file holds the wrap.
                    let inline = KeyEnvelope {
                        kdf: envelope::KDF_KEY_FILE.into(),
                        key_id: wrapped.key_id.clone(),
                        recipients: wrapped.recipients.clone(),
                        ..Default::default()
                    };
                    key_file = Some(KeyFile {
                        envelopes: vec![wrapped],
                    });
                    inline
                } else {
                    wrapped
                };
                let cipher = Box::new(Aes256Gcm::new((&data_key).into()));
                (
                    env,
                    ChunkGuard::Aes {
                        cipher,
                        prefix: nonce_prefix,
                        aad: prefix.clone(),
                    },
                )
            }
        };
        let env_bytes = envelope.encode_to_vec();
        let sealer = match sealer {
            // The chain covers the prefix and the envelope: nothing before the chunks is unchecked.
            ChunkGuard::Chain { .. } => ChunkGuard::Chain {
                prev: chain_start(
                    &[
                        &prefix[..],
                        &(env_bytes.len() as u32).to_be_bytes(),
                        &env_bytes,
                    ]
                    .concat(),
                ),
            },
            aes => aes,
        };
        out.write_all(&prefix)?;
        out.write_all(&(env_bytes.len() as u32).to_be_bytes())?;
        out.write_all(&env_bytes)?;
        let written = (prefix.len() + 4 + env_bytes.len()) as u64;
        // Compression fails early here (a bad level) rather than on the first chunk.
        chunk_compressor(opts.compression_level, opts.tuned_match_finder)?;
        let (jobs, job_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let (level, tuned) = (opts.compression_level, opts.tuned_match_finder);
        let handle = std::thread::Builder::new()
            .name("archive-zstd".into())
            .spawn(move || compression_thread(level, tuned, job_rx, done_tx))?;
        Ok(Self {
            out,
            guard: sealer,
            jobs: Some(jobs),
            done,
            compressor: Some(handle),
            in_flight: 0,
            sealed: 0,
            spare: Vec::new(),
            chunk_size: chunk_size as usize,
            buf: Vec::with_capacity(chunk_size as usize),
            counter: 0,
            tally: Tally::default(),
            record: Vec::new(),
            written,
            key_file,
        })
    }

    /// The archive's key file (its data key's wraps) when written with
    /// [`WriterOptions::key_file`]: to be stored beside the archive before its manifest.
    pub fn key_file(&self) -> Option<&KeyFile> {
        self.key_file.as_ref()
    }

    /// Appends one record.
    pub fn append(&mut self, rec: &Record) -> Result<(), ArchiveError> {
        self.record.clear();
        rec.encode_length_delimited(&mut self.record)
            .map_err(|e| ArchiveError::Io(std::io::Error::other(e)))?;
        if self.record.len() > MAX_RECORD_LEN {
            return Err(ArchiveError::EventTooLarge {
                size: self.record.len(),
                limit: MAX_RECORD_LEN,
            });
        }
        self.tally.add(rec.timestamp.as_ref(), &self.record);
        let record = std::mem::take(&mut self.record);
        let result = self.push_bytes(&record);
        self.record = record;
        result
    }

    /// Appends records already encoded (see [`Batch`]): the same bytes as appending each as a
    /// message.
    pub fn append_batch(&mut self, batch: &Batch) -> Result<(), ArchiveError> {
        if let Some(size) = batch
            .iter()
            .map(|rec| rec.bytes().len())
            .find(|len| *len > MAX_RECORD_LEN)
        {
            return Err(ArchiveError::EventTooLarge {
                size,
                limit: MAX_RECORD_LEN,
            });
        }
        for rec in batch.iter() {
            self.tally.add(rec.timestamp(), rec.bytes());
        }
        self.push_bytes(batch.bytes())
    }

    /// Adds bytes to the record stream, which is cut into chunks at `chunk_size` boundaries.
    fn push_bytes(&mut self, mut rest: &[u8]) -> Result<(), ArchiveError> {
        while !rest.is_empty() {
            let room = self.chunk_size - self.buf.len();
            let take = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == self.chunk_size {
                self.submit(0)?;
            }
        }
        Ok(())
    }

    /// Number of records appended so far.
    pub fn event_count(&self) -> u64 {
        self.tally.count
    }

    /// Bytes written to the output so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Hands the current chunk buffer to the compression thread and writes whatever it has
    /// finished, waiting only when [`IN_FLIGHT`] chunks are outstanding.
    fn submit(&mut self, flags: u8) -> Result<(), ArchiveError> {
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.chunk_size));
        let plain = std::mem::replace(&mut self.buf, next);
        let frame = self.spare.pop().unwrap_or_default();
        let job = Job {
            plain,
            frame,
            flags,
        };
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if !sent {
            // The thread stopped after an error: report it.
            return self.write_sealed(true).and(Err(stopped()));
        }
        self.in_flight += 1;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| ArchiveError::Io(std::io::Error::other("too many chunks")))?;
        while self.in_flight >= IN_FLIGHT {
            self.write_sealed(true)?;
        }
        while self.in_flight > 0 && self.write_sealed(false)? {}
        Ok(())
    }

    /// Seals and writes the next compressed chunk; waits for it when `wait`, else returns `false` when none
    /// is ready.
    fn write_sealed(&mut self, wait: bool) -> Result<bool, ArchiveError> {
        let mut job = if wait {
            self.done.recv().map_err(|_| stopped())?
        } else {
            match self.done.try_recv() {
                Ok(s) => s,
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(false),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(stopped()),
            }
        }?;
        self.in_flight -= 1;
        self.guard
            .seal(self.sealed, job.flags, &mut job.frame)
            .map_err(|()| ArchiveError::Io(std::io::Error::other("AES-GCM encryption failed")))?;
        self.sealed += 1;
        self.out.write_all(&[job.flags])?;
        self.out
            .write_all(&(job.frame.len() as u32).to_be_bytes())?;
        self.out.write_all(&job.frame)?;
        self.written += 5 + job.frame.len() as u64;
        for mut buf in [job.plain, job.frame] {
            buf.clear();
            self.spare.push(buf);
        }
        Ok(true)
    }

    /// Writes the last data chunk and the footer chunk; returns the output and the footer.
    pub fn finish(mut self) -> Result<(W, Footer), ArchiveError> {
        if !self.buf.is_empty() {
            self.submit(0)?;
        }
        let tally = std::mem::take(&mut self.tally);
        let footer = tally.footer(u64::from(self.counter));
        footer
            .encode_length_delimited(&mut self.buf)
            .map_err(|e| ArchiveError::Io(std::io::Error::other(e)))?;
        self.submit(FLAG_LAST)?;
        while self.in_flight > 0 {
            self.write_sealed(true)?;
        }
        self.jobs = None;
        if let Some(h) = self.compressor.take() {
            h.join().map_err(|_| stopped())?;
        }
        self.out.flush()?;
        Ok((self.out, footer))
    }
}

fn stopped() -> ArchiveError {
    ArchiveError::Io(std::io::Error::other(
        "the archive's compression thread stopped",
    ))
}
