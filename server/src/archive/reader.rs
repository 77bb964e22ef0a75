//! Reads an archive back into records in constant memory, authenticating every chunk before any
//! record of it is handed out, and checking the footer against what was read.

use std::io::{ErrorKind, Read};

use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use monoskope_backup_api::archive::v1::{Footer, Header, KeyEnvelope, KeyFile, Record};
use prost::Message;

use super::envelope;
use super::error::ArchiveError;
use super::format::*;
use super::keys::Keys;
use super::opening::{opening_thread, Ahead, FrameJob, Opened, READ_AHEAD};
use super::view::RecordView;
use super::writer::Tally;

/// Reads an archive's head — prefix, header and in-archive key envelope — from `input`, which
/// is left at the first frame.
pub fn read_head<R: Read>(input: &mut R) -> Result<(envelope::Head, Header), ArchiveError> {
    let (head, header, _) = read_head_parts(input)?;
    Ok((head, header))
}

fn read_head_parts<R: Read>(
    input: &mut R,
) -> Result<(envelope::Head, Header, Vec<u8>), ArchiveError> {
    let mut fixed = [0u8; 12];
    match read_full(input, &mut fixed) {
        Ok(true) => {}
        Ok(false) => return Err(ArchiveError::NotAnArchive),
        Err(e) if is_eof(&e) => return Err(ArchiveError::NotAnArchive),
        Err(e) => return Err(e),
    }
    if &fixed[..8] != MAGIC {
        return Err(ArchiveError::NotAnArchive);
    }
    let major = u16::from_be_bytes([fixed[8], fixed[9]]);
    let minor = u16::from_be_bytes([fixed[10], fixed[11]]);
    if major != FORMAT_MAJOR {
        return Err(ArchiveError::UnsupportedVersion {
            major,
            minor,
            supported: FORMAT_MAJOR,
        });
    }
    let header_bytes = read_block(input, "header")?;
    let header = Header::decode(header_bytes.as_slice())
        .map_err(|e| ArchiveError::HeaderCorrupt(format!("header does not decode: {e}")))?;
    let env_bytes = read_block(input, "key envelope")?;
    let envelope = KeyEnvelope::decode(env_bytes.as_slice())
        .map_err(|e| ArchiveError::HeaderCorrupt(format!("key envelope does not decode: {e}")))?;
    let mut prefix = Vec::with_capacity(16 + header_bytes.len());
    prefix.extend_from_slice(&fixed);
    prefix.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
    prefix.extend_from_slice(&header_bytes);
    Ok((
        envelope::Head {
            prefix,
            envelope,
            version: (major, minor),
        },
        header,
        env_bytes,
    ))
}

/// Streams the records of an archive.
pub struct ArchiveReader<R: Read> {
    input: R,
    header: Header,
    key_id: String,
    key_ids: Vec<String>,
    jobs: Option<std::sync::mpsc::Sender<FrameJob>>,
    done: std::sync::mpsc::Receiver<Result<Opened, ArchiveError>>,
    opener: Option<std::thread::JoinHandle<()>>,
    ahead: std::collections::VecDeque<Ahead>,
    /// No more frames to read: the final one was read, or reading failed.
    input_done: bool,
    /// Whether bytes follow the final frame (checked after its footer).
    trailing: Option<Result<bool, ArchiveError>>,
    spare: Vec<Vec<u8>>,
    chunk_size: usize,
    /// Next chunk to read from the input.
    read_chunk: u64,
    /// Next chunk whose records are decoded.
    next_chunk: u64,
    plain: Vec<u8>,
    pos: usize,
    tally: Tally,
    footer: Option<Footer>,
    failed: bool,
    bytes_read: u64,
}

impl<R: Read> std::fmt::Debug for ArchiveReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveReader")
            .field("backup_id", &self.header.backup_id)
            .field("next_chunk", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean end of input before the first byte.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, ArchiveError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(ArchiveError::Io(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "short read",
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn is_eof(e: &ArchiveError) -> bool {
    matches!(e, ArchiveError::Io(io) if io.kind() == ErrorKind::UnexpectedEof)
}

/// Reads a u32-length-prefixed block of the header area.
fn read_block<R: Read>(r: &mut R, what: &str) -> Result<Vec<u8>, ArchiveError> {
    let mut len = [0u8; 4];
    if !read_full(r, &mut len).map_err(|e| {
        if is_eof(&e) {
            ArchiveError::Truncated { after_chunk: None }
        } else {
            e
        }
    })? {
        return Err(ArchiveError::Truncated { after_chunk: None });
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER_LEN {
        return Err(ArchiveError::HeaderCorrupt(format!(
            "{what} length {len} exceeds {MAX_HEADER_LEN}"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    match read_full(r, &mut buf) {
        Ok(true) => Ok(buf),
        Ok(false) if len == 0 => Ok(buf),
        Ok(false) => Err(ArchiveError::Truncated { after_chunk: None }),
        Err(e) if is_eof(&e) => Err(ArchiveError::Truncated { after_chunk: None }),
        Err(e) => Err(e),
    }
}

/// Decodes a varint at the start of `buf`: `Ok(None)` when `buf` ends inside it.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, ()> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    if buf.len() >= 10 {
        Err(())
    } else {
        Ok(None)
    }
}

impl<R: Read> ArchiveReader<R> {
    /// Reads the prefix, header and key envelope, and unwraps the data key with `keys` (an
    /// archive whose wraps are in its key file: see [`ArchiveReader::open_with_key_file`]).
    pub fn open(input: R, keys: &Keys) -> Result<Self, ArchiveError> {
        Self::open_with_key_file(input, keys, None)
    }

    /// Like [`ArchiveReader::open`], with the wraps of the archive's key file
    /// (`<archive>.keys`, format 1.1) when it has one.
    pub fn open_with_key_file(
        mut input: R,
        keys: &Keys,
        key_file: Option<&KeyFile>,
    ) -> Result<Self, ArchiveError> {
        let (head, header, env_bytes) = read_head_parts(&mut input)?;
        let envelope = head.envelope;
        let prefix = head.prefix;
        if header.compression != COMPRESSION_ZSTD {
            return Err(ArchiveError::HeaderCorrupt(format!(
                "unknown compression {:?}",
                header.compression
            )));
        }
        if header.chunk_size == 0 || header.chunk_size > MAX_CHUNK_SIZE {
            return Err(ArchiveError::HeaderCorrupt(format!(
                "chunk size {} out of range",
                header.chunk_size
            )));
        }
        let opener = match header.protection.as_str() {
            PROTECTION_SHA256 => {
                if envelope.kdf != envelope::KDF_NONE {
                    return Err(ArchiveError::HeaderCorrupt(format!(
                        "unencrypted archive with key derivation {:?}",
                        envelope.kdf
                    )));
                }
                ChunkGuard::Chain {
                    prev: chain_start(
                        &[
                            &prefix[..],
                            &(env_bytes.len() as u32).to_be_bytes(),
                            &env_bytes,
                        ]
                        .concat(),
                    ),
                }
            }
            PROTECTION_AES => {
                let nonce_prefix: [u8; 7] =
                    header.nonce_prefix.as_slice().try_into().map_err(|_| {
                        ArchiveError::HeaderCorrupt("nonce prefix is not 7 bytes".into())
                    })?;
                let data_key = envelope::unwrap(&envelope, key_file, keys, &prefix)?;
                ChunkGuard::Aes {
                    cipher: Box::new(Aes256Gcm::new((&data_key).into())),
                    prefix: nonce_prefix,
                    aad: prefix.clone(),
                }
            }
            other => {
                return Err(ArchiveError::HeaderCorrupt(format!(
                    "unknown protection {other:?}"
                )))
            }
        };
        let key_id = envelope.key_id.clone();
        let key_ids = envelope::wrap_ids(&envelope, key_file);
        let bytes_read = (prefix.len() + 4 + env_bytes.len()) as u64;
        let chunk_size = header.chunk_size as usize;
        let (jobs, job_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let opener = std::thread::Builder::new()
            .name("archive-open".into())
            .spawn(move || opening_thread(opener, chunk_size, job_rx, done_tx))?;
        Ok(Self {
            input,
            chunk_size,
            header,
            key_id,
            key_ids,
            jobs: Some(jobs),
            done,
            opener: Some(opener),
            ahead: std::collections::VecDeque::new(),
            input_done: false,
            trailing: None,
            spare: Vec::new(),
            read_chunk: 0,
            next_chunk: 0,
            plain: Vec::new(),
            pos: 0,
            tally: Tally::default(),
            footer: None,
            failed: false,
            bytes_read,
        })
    }

    /// The archive's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Id of the key the archive was written under ("passphrase", or "none" when unencrypted).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key ids of every wrap of the data key ([`envelope::wrap_ids`]).
    pub fn key_ids(&self) -> &[String] {
        &self.key_ids
    }

    /// The footer, once every record has been read and checked.
    pub fn footer(&self) -> Option<&Footer> {
        self.footer.as_ref()
    }

    /// Bytes consumed from the input so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Reads every remaining record, discarding them, and returns the checked footer.
    pub fn verify_to_end(&mut self) -> Result<Footer, ArchiveError> {
        while self.next_view()?.is_some() {}
        self.footer
            .clone()
            .ok_or_else(|| ArchiveError::corrupt(self.next_chunk, "no footer"))
    }

    /// The next record; `None` after the footer has been read and checked.
    pub fn next_record(&mut self) -> Result<Option<Record>, ArchiveError> {
        let Some(range) = self.next_checked()? else {
            return Ok(None);
        };
        let body = &self.plain[range.clone()];
        match Record::decode(body) {
            Ok(rec) => {
                self.tally
                    .add(rec.timestamp.as_ref(), &self.plain[self.pos..range.end]);
                self.pos = range.end;
                Ok(Some(rec))
            }
            Err(e) => Err(self.fail(format!("record does not decode: {e}"))),
        }
    }

    /// The next record read in place (no message built: see [`RecordView`]); `None` after the
    /// footer has been read and checked. The same checks as [`Self::next_record`].
    pub fn next_view(&mut self) -> Result<Option<RecordView<'_>>, ArchiveError> {
        let Some(range) = self.next_checked()? else {
            return Ok(None);
        };
        let start = self.pos;
        self.pos = range.end;
        match RecordView::decode(&self.plain[range.clone()]) {
            Ok(view) => {
                self.tally
                    .add(view.timestamp.as_ref(), &self.plain[start..range.end]);
                Ok(Some(view))
            }
            Err(e) => {
                // As `fail` does; the fields are set directly because `plain` stays borrowed
                // by the view this function returns.
                self.failed = true;
                Err(ArchiveError::corrupt(
                    self.next_chunk.saturating_sub(1),
                    format!("record does not decode: {e}"),
                ))
            }
        }
    }

    /// Marks the reader failed; the error for the chunk just read.
    fn fail(&mut self, what: String) -> ArchiveError {
        self.failed = true;
        ArchiveError::corrupt(self.next_chunk.saturating_sub(1), what)
    }

    /// Where the next record's message lies in `plain` (its length prefix starts at `pos`),
    /// reading chunks as needed; `None` after the footer. A failure is final.
    fn next_checked(&mut self) -> Result<Option<std::ops::Range<usize>>, ArchiveError> {
        if self.failed {
            return Err(ArchiveError::corrupt(
                self.next_chunk,
                "reading after an error",
            ));
        }
        let r = self.next_inner();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<std::ops::Range<usize>>, ArchiveError> {
        loop {
            if self.footer.is_some() {
                return Ok(None);
            }
            let avail = &self.plain[self.pos..];
            match peek_varint(avail) {
                Err(()) => {
                    return Err(ArchiveError::corrupt(
                        self.next_chunk.saturating_sub(1),
                        "bad record length",
                    ))
                }
                Ok(Some((len, n))) => {
                    if len as usize > MAX_RECORD_LEN {
                        return Err(ArchiveError::corrupt(
                            self.next_chunk.saturating_sub(1),
                            "record length exceeds limit",
                        ));
                    }
                    let end = n + len as usize;
                    if avail.len() >= end {
                        return Ok(Some(self.pos + n..self.pos + end));
                    }
                }
                Ok(None) => {}
            }
            self.read_chunk()?;
        }
    }

    /// Reads frames from the input and hands them to the opening thread until
    /// [`READ_AHEAD`] are outstanding or the input is done; a read error is queued in its place.
    fn read_ahead(&mut self) {
        while !self.input_done && self.ahead.len() < READ_AHEAD {
            match self.read_frame() {
                Ok(job) => {
                    let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
                    // A stopped thread has sent the error of an earlier frame: that comes first.
                    self.ahead.push_back(Ahead::InFlight);
                    if !sent {
                        self.input_done = true;
                    }
                }
                Err(e) => {
                    self.ahead.push_back(Ahead::Failed(e));
                    self.input_done = true;
                }
            }
        }
    }

    /// Reads the next frame (flags, length, body) from the input.
    fn read_frame(&mut self) -> Result<FrameJob, ArchiveError> {
        let chunk = self.read_chunk;
        let after = chunk.checked_sub(1);
        let mut fh = [0u8; 5];
        match read_full(&mut self.input, &mut fh) {
            Ok(true) => {}
            Ok(false) => return Err(ArchiveError::Truncated { after_chunk: after }),
            Err(e) if is_eof(&e) => return Err(ArchiveError::Truncated { after_chunk: after }),
            Err(e) => return Err(e),
        }
        let flags = fh[0];
        if flags & !FLAG_LAST != 0 {
            return Err(ArchiveError::corrupt(
                chunk,
                format!("unknown frame flags {flags:#04x}"),
            ));
        }
        let len = u32::from_be_bytes([fh[1], fh[2], fh[3], fh[4]]) as usize;
        if len > max_frame_len(self.chunk_size as u32) {
            return Err(ArchiveError::corrupt(
                chunk,
                format!("frame length {len} exceeds limit"),
            ));
        }
        let mut frame = self.spare.pop().unwrap_or_default();
        frame.clear();
        frame.resize(len, 0);
        match read_full(&mut self.input, &mut frame) {
            Ok(true) => {}
            Ok(false) if len == 0 => {}
            Ok(false) => return Err(ArchiveError::Truncated { after_chunk: after }),
            Err(e) if is_eof(&e) => return Err(ArchiveError::Truncated { after_chunk: after }),
            Err(e) => return Err(e),
        }
        self.bytes_read += 5 + len as u64;
        self.read_chunk += 1;
        if flags & FLAG_LAST != 0 {
            // Nothing may follow the final frame; whether something does is reported after its
            // footer checked out.
            self.input_done = true;
            let mut extra = [0u8; 1];
            self.trailing = Some(loop {
                match self.input.read(&mut extra) {
                    Ok(n) => break Ok(n > 0),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break Err(e.into()),
                }
            });
        }
        Ok(FrameJob {
            frame,
            out: self.spare.pop().unwrap_or_default(),
            chunk,
            flags,
        })
    }

    fn read_chunk(&mut self) -> Result<(), ArchiveError> {
        let chunk = self.next_chunk;
        self.read_ahead();
        let opened = match self.ahead.pop_front() {
            Some(Ahead::InFlight) => self.done.recv().map_err(|_| {
                ArchiveError::Io(std::io::Error::other(
                    "the archive's decryption thread stopped",
                ))
            })??,
            Some(Ahead::Failed(e)) => return Err(e),
            None => return Err(ArchiveError::corrupt(chunk, "no footer")),
        };
        // Keep the opening thread busy while this chunk's records are decoded.
        self.read_ahead();
        self.next_chunk += 1;
        let last = opened.flags & FLAG_LAST != 0;
        let out = opened.out;
        self.spare.push(opened.frame);
        if !last {
            if self.pos == self.plain.len() {
                // No partial record left over: take the chunk as it is.
                let used = std::mem::replace(&mut self.plain, out);
                self.spare.push(used);
            } else {
                // Keep the partial record, append the chunk.
                self.plain.drain(..self.pos);
                self.plain.extend_from_slice(&out);
                self.spare.push(out);
            }
            self.pos = 0;
            return Ok(());
        }
        // The final chunk holds the footer and nothing else.
        if self.pos != self.plain.len() {
            return Err(ArchiveError::corrupt(
                chunk,
                "a record is cut off by the final chunk",
            ));
        }
        let footer = Footer::decode_length_delimited(out.as_slice())
            .map_err(|e| ArchiveError::corrupt(chunk, format!("footer does not decode: {e}")))?;
        self.check_footer(&footer, chunk)?;
        match self.trailing.take() {
            Some(Ok(false)) => {}
            Some(Ok(true)) => return Err(ArchiveError::TrailingData { chunk }),
            Some(Err(e)) => return Err(e),
            None => return Err(ArchiveError::corrupt(chunk, "no footer")),
        }
        self.jobs = None;
        self.footer = Some(footer);
        Ok(())
    }

    fn check_footer(&mut self, footer: &Footer, chunk: u64) -> Result<(), ArchiveError> {
        let tally = std::mem::take(&mut self.tally);
        let mine = tally.footer(chunk);
        if mine != *footer {
            return Err(ArchiveError::corrupt(
                chunk,
                format!(
                    "footer does not match the records (footer: {} events in {} chunks; read: {} events in {} chunks)",
                    footer.event_count, footer.data_chunks, mine.event_count, mine.data_chunks
                ),
            ));
        }
        Ok(())
    }
}

impl<R: Read> Drop for ArchiveReader<R> {
    /// Ends the opening thread (it finishes the frame in hand, at most one chunk) so no thread
    /// outlives its reader.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(h) = self.opener.take() {
            let _ = h.join();
        }
    }
}

impl<R: Read> Iterator for ArchiveReader<R> {
    type Item = Result<Record, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        self.next_record().transpose()
    }
}
