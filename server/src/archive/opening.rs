//! The reader's second thread: frames authenticated and decompressed one ahead of the record
//! being decoded, stopping at the first that fails.

use super::error::ArchiveError;
use super::format::*;

/// Frames read ahead of the record being decoded: one being opened, one waiting.
pub(super) const READ_AHEAD: usize = 2;

/// A frame for the opening thread, with a buffer for its plaintext.
pub(super) struct FrameJob {
    pub(super) frame: Vec<u8>,
    pub(super) out: Vec<u8>,
    pub(super) chunk: u64,
    pub(super) flags: u8,
}

/// A frame that authenticated and decompressed, with both buffers back.
pub(super) struct Opened {
    pub(super) frame: Vec<u8>,
    pub(super) out: Vec<u8>,
    pub(super) flags: u8,
}

/// What comes next, in chunk order: a frame the opening thread has, or the error that ended
/// reading ahead (it is reported only when the reader gets there).
pub(super) enum Ahead {
    InFlight,
    Failed(ArchiveError),
}

/// Authenticates (AES-GCM or the SHA-256 chain) and decompresses frames in order on its own
/// thread, so that chunk n+1 is opened while the records of chunk n are decoded. It stops at the
/// first frame that fails: nothing after it is opened.
pub(super) fn opening_thread(
    mut opener: ChunkGuard,
    chunk_size: usize,
    jobs: std::sync::mpsc::Receiver<FrameJob>,
    done: std::sync::mpsc::Sender<Result<Opened, ArchiveError>>,
) {
    let mut decompressor = match zstd::bulk::Decompressor::new() {
        Ok(d) => d,
        Err(e) => {
            let _ = done.send(Err(e.into()));
            return;
        }
    };
    while let Ok(mut job) = jobs.recv() {
        let chunk = job.chunk;
        let opened = u32::try_from(chunk)
            .map_err(|_| ArchiveError::corrupt(chunk, "too many chunks"))
            .and_then(|counter| {
                opener
                    .open(counter, job.flags, &mut job.frame)
                    .map_err(|()| ArchiveError::corrupt(chunk, ""))
            })
            .and_then(|()| {
                job.out.clear();
                job.out.reserve(chunk_size);
                decompressor
                    .decompress_to_buffer(&job.frame[..], &mut job.out)
                    .map_err(|e| {
                        ArchiveError::corrupt(chunk, format!("chunk does not decompress: {e}"))
                    })
            })
            .and_then(|n| {
                // A reused buffer may hold more than a chunk; a chunk never does.
                if n > chunk_size {
                    return Err(ArchiveError::corrupt(
                        chunk,
                        "chunk does not decompress: larger than the chunk size",
                    ));
                }
                Ok(n)
            })
            .map(|_| Opened {
                frame: job.frame,
                out: job.out,
                flags: job.flags,
            });
        let failed = opened.is_err();
        if done.send(opened).is_err() || failed {
            return;
        }
    }
}
