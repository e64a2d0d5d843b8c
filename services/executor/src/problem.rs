//! Errors across processes: one structured shape, `common.Problem` (a stable code, the text,
//! and the error's own fields), made from an [`Error`] and rebuilt into the same [`Error`] on
//! the other side. A request therefore answers the same status, code and fields whether the
//! executor runs in the caller's process or in another one; nothing is parsed out of a text.
//!
//! A gRPC status carries the problem in its details; replies with an outcome carry it as a
//! field. Only the variants that the caller treats apart are rebuilt as themselves (an
//! invocation's failure, a quota, a worker that cannot replay); the rest come back as
//! [`Error::Remote`] with their code and their text, which the gateway maps by the same table.

use invicta_model::oplog::FailureKind;
use invicta_proto::common;
use prost::Message;
use tonic::Status;

use crate::error::Error;

/// Every quota an error may name (the executor's and the registry's): a quota crosses as text
/// and comes back as the same name.
const QUOTAS: &[&str] = &[
    "workers",
    "fuel_per_month",
    "fuel_per_invocation",
    "memory_per_worker",
    "components",
    "component_bytes",
    "concurrent_invocations",
    "schedules_per_worker",
    "config_keys",
];

/// The problem that carries `e`.
pub(crate) fn to_problem(e: &Error) -> common::Problem {
    let mut problem = common::Problem {
        code: e.code().to_string(),
        message: e.to_string(),
        ..Default::default()
    };
    match e {
        Error::InvocationFailed { message, .. } | Error::WorkerFailed(message) => {
            problem.detail = message.clone();
        }
        Error::QuotaExceeded { quota, limit, used }
        | Error::Component(invicta_component_registry::Error::QuotaExceeded {
            quota,
            limit,
            used,
        }) => {
            problem.code = "quota_exceeded".into();
            problem.quota = quota.to_string();
            problem.limit = *limit;
            problem.used = *used;
        }
        // The registry's own code, which the gateway knows.
        Error::Component(inner) => {
            problem.code = inner.code().to_string();
            problem.message = inner.to_string();
        }
        _ => {}
    }
    problem
}

/// The error a problem carries.
pub(crate) fn from_problem(p: common::Problem) -> Error {
    if let Some(kind) = FailureKind::from_code(&p.code) {
        return Error::InvocationFailed {
            kind,
            message: p.detail,
        };
    }
    match p.code.as_str() {
        "worker_failed" => Error::WorkerFailed(p.detail),
        "quota_exceeded" => match QUOTAS.iter().find(|q| **q == p.quota) {
            Some(quota) => Error::QuotaExceeded {
                quota,
                limit: p.limit,
                used: p.used,
            },
            None => Error::Remote {
                code: p.code,
                message: p.message,
            },
        },
        _ => Error::Remote {
            code: p.code,
            message: p.message,
        },
    }
}

/// An error that is the caller's or the worker's, not the transport's, as a gRPC status: its
/// problem in the details.
pub(crate) fn to_status(e: &Error) -> Status {
    let code = match e {
        Error::WorkerNotFound(_) | Error::InvocationNotFound(_) => tonic::Code::NotFound,
        Error::Fenced { .. } | Error::NotOwner { .. } | Error::ShuttingDown | Error::Retry => {
            tonic::Code::Unavailable
        }
        _ => tonic::Code::FailedPrecondition,
    };
    let problem = to_problem(e);
    Status::with_details(
        code,
        problem.message.clone(),
        problem.encode_to_vec().into(),
    )
}

/// A gRPC status as an error: the problem it carries, or, from anything else (the transport, a
/// proxy), a move when the executor cannot be reached and an internal error otherwise.
pub(crate) fn from_status(status: &Status) -> Error {
    if !status.details().is_empty()
        && let Ok(problem) = common::Problem::decode(status.details())
    {
        return from_problem(problem);
    }
    let code = match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Unknown => "worker_moved",
        // A refused token is a configuration error, not a move: no retrying.
        _ => "internal",
    };
    Error::Remote {
        code: code.into(),
        message: status.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One check per error: what crosses comes back as the same code, text and fields.
    fn check(e: Error) {
        let (code, text) = (e.code().to_string(), e.to_string());
        let back = from_status(&to_status(&e));
        assert_eq!(
            (back.code(), back.to_string()),
            (code.as_str(), text.clone())
        );
        let again = from_problem(to_problem(&e));
        assert_eq!((again.code(), again.to_string()), (code.as_str(), text));
        if let Error::QuotaExceeded { quota, limit, used } = e {
            assert!(
                matches!(back, Error::QuotaExceeded { quota: q, limit: l, used: u } if q == quota && l == limit && u == used),
                "{back:?}"
            );
        }
        if let Error::InvocationFailed { kind, message } = e {
            assert!(
                matches!(&back, Error::InvocationFailed { kind: k, message: m } if *k == kind && *m == message),
                "{back:?}"
            );
        }
    }

    #[test]
    fn errors_cross_whole() {
        check(Error::InvocationFailed {
            kind: FailureKind::OutOfFuel,
            message: "the invocation used up its fuel".into(),
        });
        check(Error::InvocationFailed {
            kind: FailureKind::Trap,
            message: "unreachable".into(),
        });
        check(Error::QuotaExceeded {
            quota: "workers",
            limit: 3,
            used: 3,
        });
        check(Error::WorkerFailed(
            "replay diverged at oplog entry 8".into(),
        ));
        check(Error::WorkerNotFound("t/c/w".into()));
        check(Error::QueueFull(8));
        check(Error::UnknownFunction {
            component: "c".into(),
            function: "f".into(),
            available: "g".into(),
        });
    }

    #[test]
    fn a_registry_quota_crosses_as_a_quota() {
        let e = Error::Component(invicta_component_registry::Error::QuotaExceeded {
            quota: "components",
            limit: 2,
            used: 2,
        });
        let back = from_status(&to_status(&e));
        assert!(
            matches!(
                back,
                Error::QuotaExceeded {
                    quota: "components",
                    limit: 2,
                    used: 2
                }
            ),
            "{back:?}"
        );
    }

    #[test]
    fn a_status_without_a_problem_is_a_move_or_internal() {
        assert_eq!(
            from_status(&Status::unavailable("connection refused")).code(),
            "worker_moved"
        );
        assert_eq!(
            from_status(&Status::unauthenticated("bad token")).code(),
            "internal"
        );
    }
}
