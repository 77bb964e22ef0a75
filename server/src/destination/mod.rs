//! Where backups live: a local directory or any S3-compatible bucket, behind one small trait.
//!
//! Every object is addressed by a key relative to the destination's prefix. The layout of
//! backups under the prefix (archive and manifest per backup) is in [`layout`] and
//! [`manifest`]; the trait itself knows nothing about backups. Both implementations run the same
//! behaviour suite (tests/it/destination.rs).

pub mod copies;
pub mod keyfile;
pub mod layout;
mod local;
pub mod manifest;
mod s3;

use std::pin::Pin;
use std::sync::Arc;

use tokio::io::AsyncRead;

pub use local::LocalDir;
pub use s3::{LockMode, ObjectLock, S3Destination, S3Options};

/// Why a destination operation failed, grouped by what the caller must decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestinationError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Credentials are missing, wrong, or not allowed to do this (permanent).
    #[error("access denied by the destination: {0}")]
    PermissionDenied(String),
    /// The bucket or directory does not exist (permanent).
    #[error("{0}")]
    Missing(String),
    /// A directory destination whose directory does not exist yet: nothing was ever written
    /// there. Reading it is an error (a mistyped path must not list as "no backups"); the first
    /// backup creates it.
    #[error("{0}")]
    NotCreated(String),
    /// The destination could not be reached or failed transiently (retries exhausted).
    #[error("destination unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// An object at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the destination's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, Unix seconds.
    pub modified_unix: i64,
}

/// A byte stream read from the destination.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// Whether any error of `causes` (an error and its sources, e.g. `anyhow::Error::chain`) says
/// the destination's directory does not exist yet: nothing was ever written there.
pub fn not_created<'a>(
    mut causes: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> bool {
    causes.any(|c| matches!(c.downcast_ref(), Some(DestinationError::NotCreated(_))))
}

/// A streaming upload: parts in order, then `complete`; `abort` leaves nothing visible.
#[async_trait::async_trait]
pub trait Upload: Send {
    /// Appends a part (every part but the last is at least [`PART_SIZE`] bytes).
    async fn write_part(&mut self, part: Vec<u8>) -> Result<(), DestinationError>;
    /// Makes the object visible under its key.
    async fn complete(self: Box<Self>) -> Result<(), DestinationError>;
    /// Discards everything written.
    async fn abort(self: Box<Self>);
}

/// Size of upload parts (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// A place to keep objects.
#[async_trait::async_trait]
pub trait Destination: Send + Sync + std::fmt::Debug {
    /// Where this is, e.g. `file:///backups` or `s3://bucket/prefix`.
    fn url(&self) -> String;
    /// Starts a streaming upload of `key`.
    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, DestinationError>;
    /// An upload of `key` that asks nothing of the destination until it must: one that fits a
    /// part is written at once when it completes (on S3 one PutObject instead of three multipart
    /// requests), one aborted before a second part costs nothing. For the small and often empty
    /// archives of continuous backup; a destination that cannot be reached is found only then.
    async fn upload_lazily(&self, key: &str) -> Result<Box<dyn Upload>, DestinationError> {
        self.upload(key).await
    }
    /// Writes a small object at once (atomically visible).
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), DestinationError>;
    /// Reads an object as a stream.
    async fn get(&self, key: &str) -> Result<ObjectReader, DestinationError>;
    /// Reads the first `len` bytes of an object (all of it when it is shorter) as a stream:
    /// what is needed of an archive to check its head and keys, without transferring the rest.
    async fn get_prefix(&self, key: &str, len: u64) -> Result<ObjectReader, DestinationError> {
        use tokio::io::AsyncReadExt;
        Ok(Box::pin(self.get(key).await?.take(len)))
    }
    /// Reads a small object whole.
    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, DestinationError> {
        use tokio::io::AsyncReadExt;
        let mut r = self.get(key).await?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)
            .await
            .map_err(|e| DestinationError::Unavailable(format!("reading {key}: {e}")))?;
        Ok(buf)
    }
    /// Lists every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, DestinationError>;
    /// Deletes an object (deleting a missing object succeeds).
    async fn delete(&self, key: &str) -> Result<(), DestinationError>;
    /// Checks that the destination answers and is usable.
    async fn probe(&self) -> Result<(), DestinationError>;
    /// The retention date of an object written now when objects are locked (S3 Object Lock).
    fn object_lock_until(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        None
    }
    /// When objects are to be locked, checks that the bucket can lock them (before anything is
    /// written).
    async fn check_object_lock(&self) -> Result<(), DestinationError> {
        Ok(())
    }
    /// Removes every unfinished upload of `key` (its staged file, its S3 multipart uploads):
    /// what a backup cut off by its timeout or a signal, whose upload could not be aborted the
    /// ordinary way, leaves. Returns how many were removed.
    async fn abort_uploads(&self, key: &str) -> Result<u64, DestinationError>;
    /// Removes unfinished uploads older than `max_age_secs` (staged files, S3 multipart uploads).
    async fn cleanup_stale_uploads(&self, max_age_secs: i64) -> Result<u64, DestinationError>;
}

/// The options of an `s3://BUCKET/PREFIX?…` URL: `endpoint`, `region`, `disable-ssl=true`,
/// `credentials=NAME` (`NAME_ACCESS_KEY`/`NAME_SECRET_KEY` from the environment) and
/// `object-lock=none` override `base` for this destination alone (a copy in another region,
/// endpoint or account). No secret is ever part of the URL.
pub fn s3_url_options(base: &S3Options, query: &str) -> anyhow::Result<S3Options> {
    let mut o = base.clone();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        anyhow::ensure!(!v.is_empty(), "s3 URL option {k:?} needs a value ({k}=…)");
        match k {
            "endpoint" => o.endpoint = Some(v.to_string()),
            "region" => o.region = Some(v.to_string()),
            "disable-ssl" => o.disable_ssl = v == "true",
            "credentials" => {
                anyhow::ensure!(
                    v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "s3 URL option credentials names environment variables: letters, digits and _ (got {v:?})"
                );
                o.credentials_env = Some(v.to_string());
            }
            "object-lock" if v == "none" => o.object_lock = None,
            other => anyhow::bail!(
                "unknown s3 URL option {other:?}: endpoint, region, disable-ssl, credentials or object-lock=none"
            ),
        }
    }
    Ok(o)
}

/// Opens the destination named by `url`: `file:///DIR` or `s3://BUCKET[/PREFIX][?OPTIONS]`
/// (see [`s3_url_options`]).
pub async fn open(url: &str, s3: &S3Options) -> anyhow::Result<Arc<dyn Destination>> {
    if let Some(path) = url.strip_prefix("file://") {
        anyhow::ensure!(
            path.starts_with('/'),
            "file destinations need an absolute path: file:///DIR (got {url})"
        );
        return Ok(Arc::new(LocalDir::new(path.into())));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(
            !bucket.is_empty(),
            "s3 destinations need a bucket: s3://BUCKET/PREFIX (got {url})"
        );
        let opts = s3_url_options(s3, query)?;
        return Ok(Arc::new(S3Destination::new(bucket, prefix, &opts)?));
    }
    anyhow::bail!("unsupported destination {url:?}: use file:///DIR or s3://BUCKET/PREFIX")
}
