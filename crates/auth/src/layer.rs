//! The tower layer in front of every gRPC service: decides each call before the service sees
//! it, answers a refusal itself, and runs an allowed call with its actor in scope.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::{Actor, Authorizer, ACTOR};

/// Without an authorizer (`up` on loopback, said once at start) every call is let through as
/// [`Actor::local`].
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    authorizer: Option<Arc<Authorizer>>,
}

impl AuthLayer {
    pub fn new(authorizer: Option<Arc<Authorizer>>) -> Self {
        Self { authorizer }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authorizer: self.authorizer.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authorizer: Option<Arc<Authorizer>>,
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let decided = match &self.authorizer {
            None => Ok(Actor::local()),
            Some(authorizer) => authorizer.decide(request.uri().path(), request.headers()),
        };
        match decided {
            Ok(actor) => {
                // The ready service answers this call; its clone waits for the next one.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ACTOR.scope(actor, async move { ready.call(request).await }))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}
