//! Calls to user-srv through the balancer: a deadline on every call, the request id in the
//! metadata, ejection of an instance that fails at the transport level, and one retry on
//! the next instance for idempotent reads. A read's first attempt gets half the deadline, so
//! an instance that swallows requests (a dead host, a wedged connection) costs one retry,
//! not the whole deadline. No instance: 503 at once.

use std::{future::Future, net::IpAddr, time::Duration};

use discovery::Balancer;
use proto::user_v1::user_client::UserClient;
use tonic::{Code, Status, metadata::MetadataValue, transport::Channel};

use crate::{error::ApiError, metrics::Metrics};

/// What a call needs from the HTTP request that caused it.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    balancer: Balancer,
    deadline: Duration,
    metrics: Metrics,
}

/// Whether the call may be sent again to another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads: a transport failure is retried once on the next instance.
    Idempotent,
    /// Writes: never sent twice.
    Never,
}

/// A status made by the client's transport (connection refused or reset, GOAWAY), not sent
/// by user-srv: the instance is unusable, whatever the code says.
fn transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        && matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        )
}

impl Upstream {
    pub fn new(balancer: Balancer, deadline: Duration, metrics: Metrics) -> Self {
        Self {
            balancer,
            deadline,
            metrics,
        }
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Runs `call` on a balanced instance; see the module docs for the rules.
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        ctx: &CallContext,
        retry: Retry,
        request: Req,
        call: F,
    ) -> Result<Resp, ApiError>
    where
        Req: Clone,
        F: Fn(UserClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut failed_on: Option<String> = None;
        loop {
            let left = self.deadline.saturating_sub(started.elapsed());
            let budget = if retry == Retry::Idempotent && failed_on.is_none() {
                left / 2
            } else {
                left
            };
            let Some(picked) = self.balancer.pick(ctx.client_ip, failed_on.as_deref()) else {
                self.metrics.upstream_call("none", "no_instance");
                return Err(ApiError::Unavailable);
            };
            let mut grpc_request = tonic::Request::new(request.clone());
            grpc_request.set_timeout(budget);
            if let Ok(id) = MetadataValue::try_from(ctx.request_id.as_str()) {
                grpc_request.metadata_mut().insert("x-request-id", id);
            }
            let client = UserClient::new(picked.channel());
            let outcome = tokio::time::timeout(budget, call(client, grpc_request)).await;
            let status = match outcome {
                Err(_) => tonic::Status::deadline_exceeded("attempt timed out"),
                Ok(Ok(response)) => {
                    self.metrics.upstream_call(picked.id(), "Ok");
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
            };
            self.metrics
                .upstream_call(picked.id(), &format!("{:?}", status.code()));
            // The channel enforces the grpc-timeout we set and reports it as Cancelled.
            let timed_out = matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded);
            if timed_out && (retry == Retry::Never || failed_on.is_some()) {
                return Err(ApiError::Timeout);
            }
            if !timed_out && !transport_failure(&status) {
                return Err(status.into());
            }
            if !timed_out {
                picked.eject();
            }
            let retrying = retry == Retry::Idempotent && failed_on.is_none();
            tracing::warn!(
                instance = picked.id(), request_id = %ctx.request_id, error = %status, retrying,
                "user-srv instance failed"
            );
            if !retrying {
                return Err(ApiError::Unavailable);
            }
            failed_on = Some(picked.id().to_owned());
        }
    }
}
