//! A local directory destination: uploads are staged in a hidden file and renamed into place
//! after fsync, so an object is either whole or absent.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::{Destination, DestinationError, ObjectInfo, ObjectReader, Upload};

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

const STAGING_MARK: &str = ".upload-";

impl LocalDir {
    /// A destination rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Refuses to read a root that is missing, not a folder, or a folder that holds other
    /// things but no backup layout (a mistyped path, `file:///`): such a destination would list
    /// as "no backups" and hide the mistake. An empty folder is a new destination.
    async fn check_root(&self) -> Result<(), DestinationError> {
        let shown = self.root.display();
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(DestinationError::Missing(format!(
                    "{shown} is not a directory"
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DestinationError::NotCreated(format!(
                    "the destination directory {shown} does not exist"
                )))
            }
            Err(e) => return Err(io_err(&shown.to_string(), e)),
        }
        let layout = self
            .root
            .join(super::layout::BACKUPS_DIR.trim_end_matches('/'));
        if tokio::fs::metadata(&layout).await.is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        let mut rd = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|e| io_err(&shown.to_string(), e))?;
        match rd.next_entry().await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(DestinationError::Missing(format!(
                "{shown} is not a backup destination: it holds other files but no {} folder",
                super::layout::BACKUPS_DIR
            ))),
            Err(e) => Err(io_err(&shown.to_string(), e)),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, DestinationError> {
        if key.is_empty()
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(DestinationError::Other(format!(
                "invalid object key {key:?}"
            )));
        }
        Ok(self.root.join(key))
    }

    fn staging(path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!(
            "{STAGING_MARK}{}-{name}",
            uuid::Uuid::new_v4().simple()
        ))
    }
}

fn io_err(what: &str, e: std::io::Error) -> DestinationError {
    match e.kind() {
        std::io::ErrorKind::NotFound => DestinationError::NotFound(what.to_string()),
        std::io::ErrorKind::PermissionDenied => {
            DestinationError::PermissionDenied(format!("{what}: {e}"))
        }
        _ => DestinationError::Other(format!("{what}: {e}")),
    }
}

struct LocalUpload {
    file: tokio::fs::File,
    staging: PathBuf,
    target: PathBuf,
}

#[async_trait::async_trait]
impl Upload for LocalUpload {
    async fn write_part(&mut self, part: Vec<u8>) -> Result<(), DestinationError> {
        self.file
            .write_all(&part)
            .await
            .map_err(|e| io_err(&self.staging.display().to_string(), e))
    }

    async fn complete(mut self: Box<Self>) -> Result<(), DestinationError> {
        let what = self.target.display().to_string();
        // Writes are buffered: a full disk shows here first. The staged file goes then, or it
        // would keep the disk full for the next backup.
        let written = async {
            self.file.flush().await?;
            self.file.sync_all().await?;
            tokio::fs::rename(&self.staging, &self.target).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&self.staging).await;
            return Err(io_err(&what, e));
        }
        if let Some(dir) = self.target.parent() {
            if let Ok(d) = tokio::fs::File::open(dir).await {
                let _ = d.sync_all().await;
            }
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.staging).await;
    }
}

#[async_trait::async_trait]
impl Destination for LocalDir {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, DestinationError> {
        let target = self.path(key)?;
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_err(&dir.display().to_string(), e))?;
        }
        let staging = Self::staging(&target);
        let file = tokio::fs::File::create(&staging)
            .await
            .map_err(|e| io_err(&staging.display().to_string(), e))?;
        Ok(Box::new(LocalUpload {
            file,
            staging,
            target,
        }))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), DestinationError> {
        let mut up = self.upload(key).await?;
        if let Err(e) = up.write_part(bytes).await {
            up.abort().await;
            return Err(e);
        }
        up.complete().await
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, DestinationError> {
        let path = self.path(key)?;
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_err(key, e))?;
        Ok(Box::pin(tokio::io::BufReader::with_capacity(1 << 20, f)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, DestinationError> {
        self.check_root().await?;
        let mut out = Vec::new();
        // Only the folder the prefix names is walked (`backups/` for the backup layout), never
        // the whole root: `file:///` lists one folder, not the filesystem.
        let start = match prefix.rfind('/') {
            Some(i) => self.path(&prefix[..i])?,
            None => self.root.clone(),
        };
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let mut rd = match tokio::fs::read_dir(&dir).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir.display().to_string(), e)),
            };
            while let Some(entry) = rd
                .next_entry()
                .await
                .map_err(|e| io_err(&dir.display().to_string(), e))?
            {
                let meta = entry
                    .metadata()
                    .await
                    .map_err(|e| io_err(&entry.path().display().to_string(), e))?;
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().replace('\\', "/");
                if meta.is_dir() {
                    // Only folders that can hold keys under the prefix.
                    let folder = format!("{key}/");
                    if folder.starts_with(prefix) || prefix.starts_with(&folder) {
                        stack.push(path);
                    }
                    continue;
                }
                if key
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with(STAGING_MARK))
                    || !key.starts_with(prefix)
                {
                    continue;
                }
                let modified_unix = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as i64);
                out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                    modified_unix,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), DestinationError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(key, e)),
        }
    }

    async fn probe(&self) -> Result<(), DestinationError> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| io_err(&self.root.display().to_string(), e))?;
        let meta = tokio::fs::metadata(&self.root)
            .await
            .map_err(|e| io_err(&self.root.display().to_string(), e))?;
        if meta.permissions().readonly() {
            return Err(DestinationError::PermissionDenied(format!(
                "{} is read-only",
                self.root.display()
            )));
        }
        Ok(())
    }

    async fn abort_uploads(&self, key: &str) -> Result<u64, DestinationError> {
        let target = self.path(key)?;
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Ok(0);
        };
        let suffix = format!("-{}", name.to_string_lossy());
        let mut rd = match tokio::fs::read_dir(dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(&dir.display().to_string(), e)),
        };
        let mut removed = 0;
        while let Some(entry) = rd
            .next_entry()
            .await
            .map_err(|e| io_err(&dir.display().to_string(), e))?
        {
            let n = entry.file_name().to_string_lossy().into_owned();
            if n.starts_with(STAGING_MARK) && n.ends_with(&suffix) {
                tokio::fs::remove_file(entry.path())
                    .await
                    .map_err(|e| io_err(&n, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn cleanup_stale_uploads(&self, max_age_secs: i64) -> Result<u64, DestinationError> {
        let now = chrono::Utc::now().timestamp();
        let mut removed = 0;
        // Uploads are staged beside their object: only the backup layout is walked.
        let mut stack = vec![self
            .root
            .join(super::layout::BACKUPS_DIR.trim_end_matches('/'))];
        while let Some(dir) = stack.pop() {
            let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
                continue;
            };
            while let Ok(Some(entry)) = rd.next_entry().await {
                let Ok(meta) = entry.metadata().await else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                let staged = entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(STAGING_MARK);
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| now - d.as_secs() as i64);
                if staged
                    && age > max_age_secs
                    && tokio::fs::remove_file(entry.path()).await.is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
