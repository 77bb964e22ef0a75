//! A request body that does not decode is the caller's mistake: `INVALID_ARGUMENT`, not the
//! `INTERNAL` that tonic's codec answers (it follows gRPC's table for a server's own decode
//! failures). This layer rewrites exactly those answers; every other status passes unchanged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What prost's decode errors start with.
const DECODE_FAILED: &str = "failed to decode Protobuf message";

/// The layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct MalformedLayer;

impl<S> tower::Layer<S> for MalformedLayer {
    type Service = Malformed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Malformed(inner)
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub struct Malformed<S>(S);

type Body = tonic::body::Body;

/// `resp` with a decode failure's `INTERNAL` made `INVALID_ARGUMENT`.
pub fn rewrite(resp: http::Response<Body>) -> http::Response<Body> {
    let decode_failure = resp
        .extensions()
        .get::<tonic::Status>()
        .filter(|s| s.code() == tonic::Code::Internal && s.message().starts_with(DECODE_FAILED))
        .map(|s| s.message().to_string());
    match decode_failure {
        Some(m) => tonic::Status::invalid_argument(format!(
            "malformed request: the body is not a valid message of this method ({m})"
        ))
        .into_http(),
        None => resp,
    }
}

impl<S, Req> tower::Service<Req> for Malformed<S>
where
    S: tower::Service<Req, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move { fut.await.map(rewrite) })
    }
}
