//! Any S3-compatible bucket through `aws-sdk-s3`: streaming multipart uploads (flat memory; a
//! lazy upload that fits one part is one PutObject), the SDK's retries with backoff for transient
//! errors, immediate clear failures for permanent ones (403, no such bucket), and an aborted
//! multipart upload on any failure.

use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use monoskope_backup_client::error_line;

use super::{Destination, DestinationError, ObjectInfo, ObjectReader, Upload};

mod upload;
use upload::{create_multipart, put_object, S3Upload};

/// How to reach an S3-compatible service. Credentials come from the environment only:
/// `S3_ACCESS_KEY`/`S3_SECRET_KEY` (Monoskope's names), else `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and optional `AWS_SESSION_TOKEN`.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint as `host[:port]` or a URL; empty means AWS.
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Use plain HTTP for a `host[:port]` endpoint.
    pub disable_ssl: bool,
    /// Virtual-hosted-style addressing instead of path-style (path-style is the default for
    /// non-AWS endpoints).
    pub virtual_hosted: bool,
    /// Per-attempt timeout of one request.
    pub attempt_timeout: Option<Duration>,
    /// S3 Object Lock: every object written gets this mode and a retention date this many days
    /// ahead; the bucket must have object lock enabled.
    pub object_lock: Option<ObjectLock>,
    /// Read the credentials from `<NAME>_ACCESS_KEY` and `<NAME>_SECRET_KEY` instead of
    /// `S3_ACCESS_KEY`/`S3_SECRET_KEY` (a copy in another account).
    pub credentials_env: Option<String>,
}

/// S3 Object Lock of every object a backup writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// `GOVERNANCE` (users with `s3:BypassGovernanceRetention` may still delete) or
    /// `COMPLIANCE` (nobody can, not even the account's root, until the date).
    pub mode: LockMode,
    /// Days from the write to the retention date.
    pub days: u32,
}

/// Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[value(rename_all = "UPPERCASE")]
pub enum LockMode {
    /// S3's GOVERNANCE mode.
    Governance,
    /// S3's COMPLIANCE mode.
    Compliance,
}

impl LockMode {
    fn sdk(self) -> aws_sdk_s3::types::ObjectLockMode {
        match self {
            LockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
            LockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
        }
    }
}

impl LockMode {
    fn retention_sdk(self) -> aws_sdk_s3::types::ObjectLockRetentionMode {
        match self {
            LockMode::Governance => aws_sdk_s3::types::ObjectLockRetentionMode::Governance,
            LockMode::Compliance => aws_sdk_s3::types::ObjectLockRetentionMode::Compliance,
        }
    }
}

impl ObjectLock {
    /// The retention date of an object written now.
    pub fn until_from_now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::Duration::days(i64::from(self.days))
    }

    fn sdk_until(&self) -> aws_sdk_s3::primitives::DateTime {
        aws_sdk_s3::primitives::DateTime::from_secs(self.until_from_now().timestamp())
    }
}

impl S3Options {
    /// The endpoint URL: a URL is used as given; `host[:port]` gets `https://`, or `http://`
    /// with `disable_ssl`.
    pub fn endpoint_url(&self) -> Option<String> {
        let e = self.endpoint.as_deref()?.trim();
        if e.is_empty() {
            return None;
        }
        if e.contains("://") {
            return Some(e.trim_end_matches('/').to_string());
        }
        Some(format!(
            "{}://{}",
            if self.disable_ssl { "http" } else { "https" },
            e.trim_end_matches('/')
        ))
    }
}

fn credentials_from_env(name: Option<&str>) -> Result<Credentials, DestinationError> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(n) = name {
        let (a, s) = (format!("{n}_ACCESS_KEY"), format!("{n}_SECRET_KEY"));
        return match (get(&a), get(&s)) {
            (Some(ak), Some(sk)) => Ok(Credentials::new(ak, sk, None, None, "environment")),
            _ => Err(DestinationError::PermissionDenied(format!(
                "no S3 credentials for this destination: set {a} and {s} (its URL names credentials={n})"
            ))),
        };
    }
    let (ak, sk, token) = match (get("S3_ACCESS_KEY"), get("S3_SECRET_KEY")) {
        (Some(a), Some(s)) => (a, s, None),
        _ => match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(a), Some(s)) => (a, s, get("AWS_SESSION_TOKEN")),
            _ => {
                return Err(DestinationError::PermissionDenied(
                    "no S3 credentials: set S3_ACCESS_KEY and S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".into(),
                ))
            }
        },
    };
    Ok(Credentials::new(ak, sk, token, None, "environment"))
}

/// A bucket and a prefix in it.
#[derive(Debug, Clone)]
pub struct S3Destination {
    client: Client,
    bucket: String,
    prefix: String,
    lock: Option<ObjectLock>,
}

impl S3Destination {
    /// A destination for `bucket` under `prefix`, configured from `opts` and the environment.
    pub fn new(bucket: &str, prefix: &str, opts: &S3Options) -> anyhow::Result<Self> {
        let creds = credentials_from_env(opts.credentials_env.as_deref())?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let endpoint = opts.endpoint_url();
        let mut conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(
                opts.region.clone().unwrap_or_else(|| "us-east-1".into()),
            ))
            .credentials_provider(creds)
            .http_client(http)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(5))
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(
                        opts.attempt_timeout.unwrap_or(Duration::from_secs(120)),
                    )
                    .build(),
            )
            .force_path_style(endpoint.is_some() && !opts.virtual_hosted);
        if let Some(url) = endpoint {
            conf = conf.endpoint_url(url);
        }
        let prefix = prefix.trim_matches('/');
        Ok(Self {
            client: Client::from_conf(conf.build()),
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            lock: opts.object_lock,
        })
    }

    fn s3_upload(&self, key: String, upload_id: Option<String>) -> Box<dyn Upload> {
        Box::new(S3Upload::new(
            self.client.clone(),
            self.bucket.clone(),
            key,
            upload_id,
            self.lock,
        ))
    }

    /// Reads `key` (or the HTTP `range` of it) as a stream.
    async fn get_object(
        &self,
        key: &str,
        range: Option<String>,
    ) -> Result<ObjectReader, DestinationError> {
        let full = self.key(key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .set_range(range)
            .send()
            .await
            .map_err(|e| classify(&full, &self.bucket, e))?;
        Ok(Box::pin(out.body.into_async_read()))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Sorts an SDK error into what the caller must decide.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    what: &str,
    bucket: &str,
    err: SdkError<E, HttpResponse>,
) -> DestinationError {
    let status = match &err {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        SdkError::ResponseError(re) => Some(re.raw().status().as_u16()),
        _ => None,
    };
    let code = err.code().unwrap_or_default().to_string();
    let msg = err.message().unwrap_or_default().to_string();
    match (&err, code.as_str(), status) {
        (_, "NoSuchBucket", _) => {
            DestinationError::Missing(format!("bucket {bucket} does not exist ({what})"))
        }
        (_, "NoSuchKey" | "NotFound", _) | (_, _, Some(404)) => {
            DestinationError::NotFound(what.to_string())
        }
        (
            _,
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken",
            _,
        )
        | (_, _, Some(403)) => {
            DestinationError::PermissionDenied(format!("{what}: {code} {msg}").trim().to_string())
        }
        (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_), _, _) => {
            let mut m = format!("{what}: {}", error_line(&err));
            // rustls reading an HTTP answer as a TLS record.
            if m.contains("InvalidContentType") {
                m.push_str(" (the endpoint answers without TLS: give it as http://HOST:PORT, or set --s3-disable-ssl / S3_DISABLE_SSL)");
            }
            DestinationError::Unavailable(m)
        }
        (_, _, Some(s)) if s >= 500 => {
            DestinationError::Unavailable(format!("{what}: HTTP {s} {code} {msg}"))
        }
        _ => DestinationError::Other(format!("{what}: {}", error_line(&err))),
    }
}

#[async_trait::async_trait]
impl Destination for S3Destination {
    fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }

    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, DestinationError> {
        let full = self.key(key);
        let upload_id =
            create_multipart(&self.client, &self.bucket, &full, self.lock.as_ref()).await?;
        Ok(self.s3_upload(full, Some(upload_id)))
    }

    async fn upload_lazily(&self, key: &str) -> Result<Box<dyn Upload>, DestinationError> {
        Ok(self.s3_upload(self.key(key), None))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), DestinationError> {
        put_object(
            &self.client,
            &self.bucket,
            &self.key(key),
            bytes,
            self.lock.as_ref(),
        )
        .await
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, DestinationError> {
        self.get_object(key, None).await
    }

    async fn get_prefix(&self, key: &str, len: u64) -> Result<ObjectReader, DestinationError> {
        self.get_object(key, Some(format!("bytes=0-{}", len.max(1) - 1)))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, DestinationError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.key(prefix))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify(&format!("list {}", self.url()), &self.bucket, e))?;
            for o in page.contents() {
                let Some(key) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified_unix: o.last_modified().map_or(0, |t| t.secs()),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), DestinationError> {
        let full = self.key(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify(&format!("delete {full}"), &self.bucket, e))?;
        Ok(())
    }

    fn object_lock_until(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.lock.map(|l| l.until_from_now())
    }

    async fn check_object_lock(&self) -> Result<(), DestinationError> {
        let Some(lock) = &self.lock else {
            return Ok(());
        };
        let out = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        let enabled = match out {
            Ok(o) => o
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| *e == aws_sdk_s3::types::ObjectLockEnabled::Enabled),
            Err(e) => {
                let code = e.as_service_error().and_then(|s| {
                    aws_sdk_s3::error::ProvideErrorMetadata::code(s).map(str::to_string)
                });
                if code.as_deref() == Some("ObjectLockConfigurationNotFoundError") {
                    false
                } else {
                    return Err(classify(
                        &format!("read the object lock configuration of {}", self.bucket),
                        &self.bucket,
                        e,
                    ));
                }
            }
        };
        if !enabled {
            return Err(DestinationError::Other(format!(
                "bucket {} has no object lock enabled, but --s3-object-lock-mode {:?} asks for it: object lock can only be enabled when a bucket is created (aws s3api create-bucket --object-lock-enabled-for-bucket) or on a versioned bucket; nothing was written",
                self.bucket, lock.mode
            )));
        }
        Ok(())
    }

    async fn probe(&self) -> Result<(), DestinationError> {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| classify(&format!("list {}", self.url()), &self.bucket, e))?;
        Ok(())
    }

    async fn abort_uploads(&self, key: &str) -> Result<u64, DestinationError> {
        let full = self.key(key);
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(&full)
            .send()
            .await
            .map_err(|e| classify("list multipart uploads", &self.bucket, e))?;
        let mut removed = 0;
        for u in out.uploads() {
            if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                if k != full {
                    continue;
                }
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(k)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| classify("abort multipart upload", &self.bucket, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn cleanup_stale_uploads(&self, max_age_secs: i64) -> Result<u64, DestinationError> {
        let now = chrono::Utc::now().timestamp();
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .send()
            .await
            .map_err(|e| classify("list multipart uploads", &self.bucket, e))?;
        let mut removed = 0;
        for u in out.uploads() {
            let old = u.initiated().is_some_and(|t| now - t.secs() > max_age_secs);
            if let (true, Some(key), Some(id)) = (old, u.key(), u.upload_id()) {
                if self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
