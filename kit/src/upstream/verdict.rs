//! What one finished attempt means for its call, decided in one place: the instance answered
//! (the call is over, whatever the answer), it could not take the call (another instance
//! may), or the call's deadline passed.

use std::borrow::Cow;

use discovery::balancer::Picked;
use tonic::{Code, Status};

use crate::{http::ApiError, rpc_metrics::code_name};

/// How an attempt ended, as [`verdict`] reads it.
pub(crate) type Outcome<R> = Result<tonic::Response<R>, Status>;

#[derive(Debug)]
pub(crate) enum Verdict<R> {
    /// The service answered: a result or a status it means (NotFound, InvalidArgument…).
    Answered(Answer<R>),
    /// The instance could not take the call; it did no work, so another instance may.
    Elsewhere(Why),
    /// The call's deadline passed.
    OutOfTime,
}

#[derive(Debug)]
pub(crate) enum Answer<R> {
    Ok(R),
    Status(Status),
}

impl<R> Answer<R> {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Ok(_) => "OK",
            Self::Status(s) => code_name(s.code()),
        }
    }

    pub(crate) fn into_result(self, service: &'static str) -> Result<R, ApiError> {
        match self {
            Self::Ok(r) => Ok(r),
            Self::Status(s) => Err(ApiError::from_status(s, service)),
        }
    }
}

/// Why an instance could not take a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The connection was refused or reset (the client's transport made the status).
    Refused,
    /// The service shed the call: it is over its concurrency limit (`RESOURCE_EXHAUSTED`).
    Shed,
    /// The service said it cannot serve now (`UNAVAILABLE`: its database is away).
    Unavailable,
}

impl Why {
    /// What the instance's outlier detection learns from it.
    pub(crate) fn record(self, picked: &Picked) {
        match self {
            Self::Refused => picked.refused(),
            Self::Unavailable => picked.failed(),
            // Shedding is the instance protecting itself, not failing.
            Self::Shed => {}
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Shed => "RESOURCE_EXHAUSTED",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    /// The client's answer when no other instance takes the call.
    pub(crate) fn error(self, service: &'static str) -> ApiError {
        match self {
            Self::Shed => ApiError::Overloaded(Cow::Borrowed(service)),
            Self::Refused | Self::Unavailable => ApiError::Unavailable(Cow::Borrowed(service)),
        }
    }
}

/// A status made by the client's transport (connection refused or reset, GOAWAY), not sent
/// by the service.
fn made_by_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        && matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        )
}

/// `deadline_passed`: the call's deadline has come (a status the channel made on its
/// grpc-timeout then means the time is up, not that the instance failed).
pub(crate) fn verdict<R>(outcome: Outcome<R>, deadline_passed: bool) -> Verdict<R> {
    let status = match outcome {
        Ok(response) => return Verdict::Answered(Answer::Ok(response.into_inner())),
        Err(status) => status,
    };
    match status.code() {
        // The channel enforces the grpc-timeout we set and reports it as Cancelled.
        Code::Cancelled | Code::DeadlineExceeded if deadline_passed => Verdict::OutOfTime,
        // Cut off with time still left: the connection closed under the call (an instance
        // stopping, a reset), so the instance did not take it.
        Code::Cancelled => Verdict::Elsewhere(Why::Refused),
        _ if made_by_transport(&status) => Verdict::Elsewhere(Why::Refused),
        Code::DeadlineExceeded => Verdict::OutOfTime,
        Code::ResourceExhausted => Verdict::Elsewhere(Why::Shed),
        Code::Unavailable => Verdict::Elsewhere(Why::Unavailable),
        _ => Verdict::Answered(Answer::Status(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(outcome: Outcome<()>, deadline_passed: bool) -> String {
        match verdict(outcome, deadline_passed) {
            Verdict::Answered(a) => format!("answered {}", a.label()),
            Verdict::Elsewhere(w) => format!("elsewhere {}", w.label()),
            Verdict::OutOfTime => "out of time".to_owned(),
        }
    }

    #[test]
    fn each_ending_has_one_meaning() {
        let transport = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        assert_eq!(
            transport.code(),
            Code::Unknown,
            "tonic's code for a bare io error"
        );
        let cases: [(Outcome<()>, &str); 8] = [
            (Ok(tonic::Response::new(())), "answered OK"),
            (Err(Status::not_found("no user")), "answered NOT_FOUND"),
            (
                Err(Status::invalid_argument("bad")),
                "answered INVALID_ARGUMENT",
            ),
            (Err(Status::internal("bug")), "answered INTERNAL"),
            (Err(transport), "elsewhere refused"),
            (
                Err(Status::resource_exhausted("over limit")),
                "elsewhere RESOURCE_EXHAUSTED",
            ),
            (
                Err(Status::unavailable("database away")),
                "elsewhere UNAVAILABLE",
            ),
            (Err(Status::deadline_exceeded("late")), "out of time"),
        ];
        for (outcome, want) in cases {
            assert_eq!(of(outcome, false), want);
        }
        let cancelled = || Err(Status::cancelled("connection closed"));
        assert_eq!(
            of(cancelled(), true),
            "out of time",
            "the channel's grpc-timeout"
        );
        assert_eq!(
            of(cancelled(), false),
            "elsewhere refused",
            "cut off with time left: the instance did not take it"
        );
    }

    #[test]
    fn the_answer_a_client_gets_when_no_instance_takes_the_call() {
        use axum::response::IntoResponse;
        let answer = |w: Why| {
            let r = w.error("user-srv").into_response();
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        };
        assert_eq!(
            answer(Why::Shed),
            (503, true),
            "overloaded: come back later"
        );
        assert_eq!(answer(Why::Refused), (503, false));
        assert_eq!(answer(Why::Unavailable), (503, false));
    }
}
