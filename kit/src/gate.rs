//! One tower layer for the checks a gRPC server runs before each call: a [`Check`] lets the
//! call through (holding its pass until the call ends), answers it at once with a `Status`
//! (nothing done), or first asks somewhere else. Admission and Connect's authorization are
//! both such checks.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::Status;
use tower::{Layer, Service};

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a check says of one call.
pub enum Verdict<P> {
    /// Go on; the pass is held until the call's answer is ready.
    Pass(P),
    /// Answer at once with this status; the call is not made.
    Refuse(Status),
    /// Not known yet: wait for this, then pass or refuse.
    Ask(Boxed<Result<P, Status>>),
}

impl<P> std::fmt::Debug for Verdict<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pass(_) => f.write_str("Pass"),
            Self::Refuse(status) => f.debug_tuple("Refuse").field(status).finish(),
            Self::Ask(_) => f.write_str("Ask"),
        }
    }
}

/// A rule applied to every call before the service sees it.
pub trait Check: Clone + Send + 'static {
    type Pass: Send + 'static;

    fn check<B>(&self, request: &http::Request<B>) -> Verdict<Self::Pass>;

    /// The call has been answered (whatever the answer): what the pass should record.
    fn done(_pass: Self::Pass) {}
}

/// The layer that runs a [`Check`] before each call.
#[derive(Debug, Clone)]
pub struct Gate<C>(pub C);

impl<S, C: Clone> Layer<S> for Gate<C> {
    type Service = Gated<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            inner,
            check: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Gated<S, C> {
    inner: S,
    check: C,
}

impl<S, C, ReqBody, ResBody> Service<http::Request<ReqBody>> for Gated<S, C>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    C: Check,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Boxed<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match self.check.check(&request) {
            Verdict::Pass(pass) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let result = call.await;
                    C::done(pass);
                    result
                })
            }
            Verdict::Refuse(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            Verdict::Ask(asked) => {
                // The service was made ready for this call: take it, leave a clone behind.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    match asked.await {
                        Ok(pass) => {
                            let result = inner.call(request).await;
                            C::done(pass);
                            result
                        }
                        Err(status) => Ok(status.into_http()),
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use tonic::Code;
    use tower::ServiceExt;

    use super::*;

    /// Passes `/pass`, refuses `/refuse`, asks for anything else and then passes `/ask-ok`
    /// only; counts the passes given back.
    #[derive(Clone, Default)]
    struct Rule {
        done: Arc<AtomicUsize>,
    }

    impl Check for Rule {
        type Pass = Arc<AtomicUsize>;

        fn check<B>(&self, request: &http::Request<B>) -> Verdict<Self::Pass> {
            let done = Arc::clone(&self.done);
            match request.uri().path() {
                "/pass" => Verdict::Pass(done),
                "/refuse" => Verdict::Refuse(Status::permission_denied("no")),
                path => {
                    let ok = path == "/ask-ok";
                    Verdict::Ask(Box::pin(async move {
                        if ok {
                            Ok(done)
                        } else {
                            Err(Status::unavailable("asked, refused"))
                        }
                    }))
                }
            }
        }

        fn done(pass: Self::Pass) {
            pass.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn code(rule: &Rule, calls: &Arc<AtomicUsize>, path: &str) -> Code {
        let calls = Arc::clone(calls);
        let inner = tower::service_fn(move |_: http::Request<()>| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Infallible>(http::Response::new(String::new())) }
        });
        let request = http::Request::builder()
            .uri(path)
            .body(())
            .expect("request");
        let response = Gate(rule.clone())
            .layer(inner)
            .oneshot(request)
            .await
            .expect("infallible");
        response
            .headers()
            .get("grpc-status")
            .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes()))
    }

    #[tokio::test]
    async fn a_refused_call_never_reaches_the_service_and_a_pass_is_given_back_once() {
        let rule = Rule::default();
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(code(&rule, &calls, "/pass").await, Code::Ok);
        assert_eq!(code(&rule, &calls, "/refuse").await, Code::PermissionDenied);
        assert_eq!(code(&rule, &calls, "/ask-ok").await, Code::Ok);
        assert_eq!(code(&rule, &calls, "/ask-no").await, Code::Unavailable);
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "only the two passed calls"
        );
        assert_eq!(rule.done.load(Ordering::Relaxed), 2, "each pass given back");
    }
}
