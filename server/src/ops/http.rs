//! A small HTTP(S) client for the two plain HTTP peers of the service: the gateway's JWKS
//! endpoint and the Prometheus Pushgateway. HTTPS uses the system's root certificates.

use std::time::Duration;

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A reusable client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Https, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: http::StatusCode,
    /// Body.
    pub body: Bytes,
}

impl HttpClient {
    /// A client whose every request ends within `timeout`.
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .context("cannot load the system's root certificates")?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            inner: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        })
    }

    /// Sends one request.
    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        let mut req = http::Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("bad URL {url:?}"))?;
        let fut = async {
            // hyper-util's error hides its cause in Display; show the chain.
            let res = self
                .inner
                .request(req)
                .await
                .map_err(|e| anyhow!(monoskope_backup_client::error_line(&e)))?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            anyhow::Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| anyhow!("no answer within {:?}", self.timeout))?
    }
}
