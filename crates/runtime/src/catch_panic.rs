//! A panic in a handler becomes an ordinary INTERNAL answer with a reference, logged once (in
//! the request's span, so with its request id), instead of unwinding into the connection: hyper
//! would tear the connection down and every call on it, this one included, would end CANCELLED.
//! Handlers must not panic on any input (see the error model); this is the net under that rule.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;

use crate::ApiError;

/// Wraps a gRPC service with [`CatchPanic`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> tower::Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

type Answer<E> = Result<http::Response<tonic::body::Body>, E>;

impl<S, B> tower::Service<http::Request<B>> for CatchPanic<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Answer<S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let answer = self.inner.call(request);
        Box::pin(async move {
            match AssertUnwindSafe(answer).catch_unwind().await {
                Ok(answer) => answer,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".to_owned());
                    let status = tonic::Status::from(ApiError::internal(format!(
                        "handler of {method} panicked: {what}"
                    )));
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    #[tokio::test]
    async fn a_handler_that_panics_answers_internal_with_a_reference_and_no_detail() {
        let panicking = tower::service_fn(|_: http::Request<()>| async {
            if true {
                panic!("index out of bounds: the len is 0");
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut service = CatchPanicLayer.layer(panicking);
        let request = http::Request::builder()
            .uri("/partnerledger.attribution.v1.AttributionService/GetPerformance")
            .body(())
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status.message().starts_with("internal error (ref "),
            "{status:?}"
        );
        assert!(!status.message().contains("index out of bounds"));
    }

    #[tokio::test]
    async fn an_answer_passes_through_unchanged() {
        let fine = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("grpc-status", "0")
                    .body(tonic::body::Body::empty())
                    .unwrap(),
            )
        });
        let mut service = CatchPanicLayer.layer(fine);
        let response = service
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "0");
    }
}
