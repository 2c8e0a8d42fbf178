//! Which calls a gRPC server takes on. While its readiness check fails (the database is
//! away), a call is answered `UNAVAILABLE` at once instead of waiting on the pool; beyond
//! the adaptive concurrency limit ([`crate::overload`]), `RESOURCE_EXHAUSTED` at once. Both
//! mean "nothing was done": a gateway tries another instance. Health and reflection are
//! always answered, so Consul's check sees a live process whatever its load.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tonic::Status;

use crate::{
    gate::{Check, Verdict},
    overload::{Limiter, Permit},
};

/// Shared by the server's layer and its readiness monitor (cheap to clone).
#[derive(Debug, Clone)]
pub struct Admission {
    ready: Arc<AtomicBool>,
    limiter: Limiter,
}

impl Admission {
    pub fn new(limiter: Limiter) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(true)),
            limiter,
        }
    }

    /// Whether the server's dependencies answer (set by its readiness monitor).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

/// Calls every server answers whatever its state.
fn always_admitted(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl Check for Admission {
    type Pass = Option<Permit>;

    fn check<B>(&self, request: &http::Request<B>) -> Verdict<Self::Pass> {
        if always_admitted(request.uri().path()) {
            return Verdict::Pass(None);
        }
        if !self.is_ready() {
            return Verdict::Refuse(Status::unavailable(
                "not ready: the database is unavailable",
            ));
        }
        match self.limiter.try_acquire() {
            Some(permit) => Verdict::Pass(Some(permit)),
            None => Verdict::Refuse(Status::resource_exhausted(
                "over the concurrency limit; try another instance",
            )),
        }
    }

    fn done(pass: Self::Pass) {
        if let Some(permit) = pass {
            permit.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::Code;
    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::{gate::Gate, overload::LimitSettings};

    fn code(response: &http::Response<String>) -> Code {
        response
            .headers()
            .get("grpc-status")
            .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes()))
    }

    async fn call<S>(service: &S, path: &str) -> Code
    where
        S: Service<http::Request<()>, Response = http::Response<String>, Error = Infallible>
            + Clone,
    {
        let request = http::Request::builder()
            .uri(path)
            .body(())
            .expect("request");
        let response = service.clone().oneshot(request).await.expect("infallible");
        code(&response)
    }

    fn admitted(
        limit: u32,
    ) -> (
        Admission,
        impl Service<http::Request<()>, Response = http::Response<String>, Error = Infallible> + Clone,
    ) {
        let admission = Admission::new(Limiter::new(&LimitSettings {
            initial: limit,
            min: limit,
            max: limit,
            ..LimitSettings::default()
        }));
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        });
        (admission.clone(), Gate(admission).layer(inner))
    }

    #[tokio::test]
    async fn a_server_without_its_database_answers_unavailable_but_health_still_answers() {
        let (admission, service) = admitted(8);
        assert_eq!(call(&service, "/user.v1.User/GetUserList").await, Code::Ok);
        admission.set_ready(false);
        assert_eq!(
            call(&service, "/user.v1.User/GetUserList").await,
            Code::Unavailable
        );
        assert_eq!(
            call(&service, "/grpc.health.v1.Health/Check").await,
            Code::Ok
        );
        admission.set_ready(true);
        assert_eq!(call(&service, "/user.v1.User/GetUserList").await, Code::Ok);
    }

    #[tokio::test]
    async fn beyond_the_limit_calls_are_resource_exhausted_and_health_is_not_counted() {
        let (admission, service) = admitted(2);
        let held: Vec<_> = (0..2)
            .filter_map(|_| admission.limiter().try_acquire())
            .collect();
        assert_eq!(held.len(), 2);
        assert_eq!(
            call(&service, "/user.v1.User/GetUserList").await,
            Code::ResourceExhausted
        );
        assert_eq!(
            call(&service, "/grpc.health.v1.Health/Check").await,
            Code::Ok
        );
        assert_eq!(admission.limiter().refused(), 1);
        drop(held);
        assert_eq!(call(&service, "/user.v1.User/GetUserList").await, Code::Ok);
    }
}
