//! An S3 upload: a multipart upload streamed part by part, or a lazy one that starts its
//! multipart upload only at a second part and is one PutObject when it fits one.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use super::{classify, ObjectLock};
use crate::destination::{DestinationError, Upload};

pub(super) struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    /// `None` until the multipart upload is started: a lazy upload starts it at its second part.
    upload_id: Option<String>,
    /// A lazy upload's first part, held until it is known whether another follows.
    held: Option<Vec<u8>>,
    parts: Vec<CompletedPart>,
    lock: Option<ObjectLock>,
}

/// Starts a multipart upload of `key` (locked as `lock` says); returns its id.
pub(super) async fn create_multipart(
    client: &Client,
    bucket: &str,
    key: &str,
    lock: Option<&ObjectLock>,
) -> Result<String, DestinationError> {
    let mut req = client.create_multipart_upload().bucket(bucket).key(key);
    if let Some(l) = lock {
        req = req
            .object_lock_mode(l.mode.sdk())
            .object_lock_retain_until_date(l.sdk_until());
    }
    let out = req
        .send()
        .await
        .map_err(|e| classify(&format!("start upload of {key}"), bucket, e))?;
    out.upload_id
        .ok_or_else(|| DestinationError::Other("the S3 server returned no upload id".into()))
}

/// Writes `bytes` as the object `key` in one request (locked as `lock` says).
pub(super) async fn put_object(
    client: &Client,
    bucket: &str,
    key: &str,
    bytes: Vec<u8>,
    lock: Option<&ObjectLock>,
) -> Result<(), DestinationError> {
    let mut req = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(bytes));
    if let Some(l) = lock {
        req = req
            .object_lock_mode(l.mode.sdk())
            .object_lock_retain_until_date(l.sdk_until());
    }
    req.send()
        .await
        .map_err(|e| classify(&format!("put {key}"), bucket, e))?;
    Ok(())
}

#[async_trait::async_trait]
impl Upload for S3Upload {
    async fn write_part(&mut self, part: Vec<u8>) -> Result<(), DestinationError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                // Lazy: the first part waits; a second means a multipart upload after all.
                let Some(first) = self.held.take() else {
                    self.held = Some(part);
                    return Ok(());
                };
                let id =
                    create_multipart(&self.client, &self.bucket, &self.key, self.lock.as_ref())
                        .await?;
                self.upload_id = Some(id.clone());
                self.send_part(&id, first).await?;
                id
            }
        };
        self.send_part(&upload_id, part).await
    }

    async fn complete(self: Box<Self>) -> Result<(), DestinationError> {
        let Some(upload_id) = self.upload_id.clone() else {
            // A lazy upload that fit one part: one request.
            let body = self.held.unwrap_or_default();
            return put_object(
                &self.client,
                &self.bucket,
                &self.key,
                body,
                self.lock.as_ref(),
            )
            .await;
        };
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(self.parts.clone()))
            .build();
        let res = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .multipart_upload(parts)
            .send()
            .await;
        let done = match res {
            Ok(done) => done,
            Err(e) => {
                let err = classify(&format!("complete upload of {}", self.key), &self.bucket, e);
                self.abort().await;
                return Err(err);
            }
        };
        // The retention asked for at the upload's start, set once more on the completed
        // version: S3 applies it from CreateMultipartUpload, some S3-compatible servers only
        // from PutObjectRetention (moto). Extending a date is always allowed.
        if let Some(l) = &self.lock {
            let retention = aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(l.mode.retention_sdk())
                .retain_until_date(l.sdk_until())
                .build();
            self.client
                .put_object_retention()
                .bucket(&self.bucket)
                .key(&self.key)
                .set_version_id(done.version_id().map(str::to_string))
                .retention(retention)
                .send()
                .await
                .map_err(|e| classify(&format!("lock {}", self.key), &self.bucket, e))?;
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        // A lazy upload not yet started has nothing at the destination.
        let Some(upload_id) = &self.upload_id else {
            return;
        };
        let res = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = res {
            tracing::warn!(key = %self.key, error = %classify("abort multipart upload", &self.bucket, e), "could not abort the multipart upload; retention removes it after a day");
        }
    }
}

impl S3Upload {
    /// An upload of `key`: started (`upload_id`) or lazy (`None`, started at its second part).
    pub(super) fn new(
        client: Client,
        bucket: String,
        key: String,
        upload_id: Option<String>,
        lock: Option<ObjectLock>,
    ) -> Self {
        Self {
            client,
            bucket,
            key,
            upload_id,
            held: None,
            parts: Vec::new(),
            lock,
        }
    }

    async fn send_part(&mut self, upload_id: &str, part: Vec<u8>) -> Result<(), DestinationError> {
        let n = self.parts.len() as i32 + 1;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(n)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(|e| classify(&format!("upload part {n} of {}", self.key), &self.bucket, e))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag)
                .build(),
        );
        Ok(())
    }
}
