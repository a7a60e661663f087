//! The crate's single error type, and how gateway replies are mapped into it.
//!
//! etcd's JSON gateway answers a failed unary call with an HTTP status and a body
//! `{"error":"<msg>","message":"<msg>","code":<gRPC code>}`; antietcd answers with an
//! HTTP status and a `text/plain` message. Both are folded into [`Error`] by
//! [`Error::from_reply`]: the gRPC `code` and the message decide first (the HTTP status
//! of a gRPC code differs between gateway versions), the HTTP status is the fallback.

use std::time::Duration;

/// A boxed error kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to etcd or antietcd.
///
/// Variants are semantic: callers match on *what* happened (a missing lease, a compacted
/// revision, a dead cluster), while the server's own wording stays in `message` and the
/// underlying transport or parse error in the `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key that the request required does not exist (etcd: `put` with `ignore_value`
    /// on a missing key).
    #[error("key not found: {message}")]
    KeyNotFound {
        /// The server's message.
        message: String,
    },
    /// Something else the request named does not exist (gRPC `NotFound`, HTTP 404): an
    /// unknown member, or an API that the server does not serve at all.
    #[error("not found: {message}")]
    NotFound {
        /// The server's message.
        message: String,
    },
    /// The lease named in the request does not exist (never granted, revoked or expired).
    #[error("lease not found: {message}")]
    LeaseNotFound {
        /// The server's message.
        message: String,
    },
    /// The requested revision has been compacted away.
    ///
    /// For a watch, re-read the data and watch again from `compact_revision`.
    #[error("revision {requested} is compacted (compact revision {compact_revision})")]
    Compacted {
        /// The revision that was asked for (0 when unknown).
        requested: i64,
        /// The oldest revision still available (0 when the server did not say).
        compact_revision: i64,
    },
    /// A revision or value is out of range (e.g. a future revision, a too large TTL).
    #[error("out of range: {message}")]
    OutOfRange {
        /// The server's message.
        message: String,
    },
    /// The system is not in a state where the operation can run (gRPC
    /// `FailedPrecondition`: lease already exists, auth not enabled, ...).
    #[error("failed precondition: {message}")]
    FailedPrecondition {
        /// The server's message.
        message: String,
    },
    /// The request was not authenticated: no token, an invalid or expired token, or a
    /// wrong user name or password.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The server's message.
        message: String,
    },
    /// The authenticated user may not do this.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The server's message.
        message: String,
    },
    /// The request was malformed or violated a server rule.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server's message.
        message: String,
    },
    /// A server quota was hit (database space, message size).
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        /// The server's message.
        message: String,
    },
    /// The server does not implement this request or option (antietcd answers 501 for
    /// unsupported ranges and compare results).
    #[error("not supported by the server: {message}")]
    Unimplemented {
        /// The server's message.
        message: String,
    },
    /// An election has no leader.
    #[error("election has no leader")]
    NoLeader,
    /// An election call was made with a leader key that no longer leads.
    #[error("not the election leader")]
    NotLeader,
    /// The server is temporarily unable to serve (no leader, shutting down, a stream
    /// broken mid-way). Retryable.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The transport error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The request did not complete in time. Retryable (but a write may have been applied).
    #[error("timed out: {message}")]
    Timeout {
        /// What timed out, and after how long.
        message: String,
    },
    /// No endpoint could be connected to.
    #[error("no endpoint reachable (tried {endpoints:?})")]
    NotReachable {
        /// The endpoints that were tried, in order.
        endpoints: Vec<String>,
        /// The connection error of the last endpoint tried.
        #[source]
        source: BoxError,
    },
    /// A watch was cancelled by the server for a reason not covered by another variant.
    #[error("watch cancelled by the server: {reason}")]
    WatchCanceled {
        /// The server's `cancel_reason`.
        reason: String,
    },
    /// The server's reply could not be understood (malformed or unexpected JSON).
    #[error("cannot decode the server's reply to {what}: {detail}")]
    Decode {
        /// Which reply was being decoded.
        what: String,
        /// The start of the offending body, or another description.
        detail: String,
        /// The parse error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The client was configured wrongly (bad endpoint URL, unreadable certificate file).
    #[error("invalid configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// Any other HTTP error reply.
    #[error("HTTP {status}: {message}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The gRPC code from the body, when there is one.
        code: Option<i32>,
        /// The server's message.
        message: String,
    },
}

impl Error {
    /// Whether trying the same request again later may succeed (the server was
    /// unavailable, unreachable or slow).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. } | Error::NotReachable { .. })
    }

    /// Whether the error says that the auth token is missing, invalid or expired, so that
    /// authenticating again may help.
    pub(crate) fn is_token_problem(&self) -> bool {
        match self {
            Error::Unauthenticated { message } => {
                message.contains("invalid auth token") || message.contains("user name is empty")
            }
            _ => false,
        }
    }

    pub(crate) fn decode(what: &str, body: &[u8], source: Option<BoxError>) -> Error {
        Error::Decode { what: what.to_string(), detail: snippet(body), source }
    }

    pub(crate) fn unavailable(message: impl Into<String>, source: Option<BoxError>) -> Error {
        Error::Unavailable { message: message.into(), source }
    }

    pub(crate) fn timeout(what: &str, after: Duration) -> Error {
        Error::Timeout { message: format!("{what} after {after:?}") }
    }

    pub(crate) fn config(message: impl Into<String>, source: Option<BoxError>) -> Error {
        Error::Config { message: message.into(), source }
    }

    /// Maps a non-2xx reply (HTTP status plus body) to an error.
    pub(crate) fn from_reply(status: u16, body: &[u8]) -> Error {
        #[derive(serde::Deserialize)]
        struct GatewayError {
            #[serde(default)]
            code: Option<i32>,
            #[serde(default)]
            message: Option<String>,
            #[serde(default)]
            error: Option<serde_json::Value>,
        }
        if let Ok(err) = serde_json::from_slice::<GatewayError>(body) {
            let message = err
                .message
                .or_else(|| err.error.and_then(|e| e.as_str().map(str::to_string)))
                .unwrap_or_default();
            return Error::from_status(status, err.code, message);
        }
        let message = String::from_utf8_lossy(body).trim().to_string();
        Error::from_status(status, None, message)
    }

    /// Maps a gRPC code (if any), a message and an HTTP status to an error.
    pub(crate) fn from_status(status: u16, code: Option<i32>, message: String) -> Error {
        if let Some(e) = Error::from_message(&message) {
            return e;
        }
        match code {
            Some(code) => match code {
                1 | 4 => Error::Timeout { message },
                3 => Error::InvalidArgument { message },
                5 => Error::NotFound { message },
                7 => Error::PermissionDenied { message },
                8 => Error::ResourceExhausted { message },
                9 => Error::FailedPrecondition { message },
                11 => Error::OutOfRange { message },
                12 => Error::Unimplemented { message },
                14 => Error::Unavailable { message, source: None },
                16 => Error::Unauthenticated { message },
                _ => Error::Http { status, code: Some(code), message },
            },
            None => match status {
                400 => Error::InvalidArgument { message },
                401 => Error::Unauthenticated { message },
                403 => Error::PermissionDenied { message },
                404 => Error::NotFound { message },
                408 | 504 => Error::Timeout { message },
                412 => Error::FailedPrecondition { message },
                429 => Error::ResourceExhausted { message },
                501 => Error::Unimplemented { message },
                502 | 503 => Error::Unavailable { message, source: None },
                _ => Error::Http { status, code: None, message },
            },
        }
    }

    /// Recognises the well-known messages whose meaning is more precise than their code.
    pub(crate) fn from_message(message: &str) -> Option<Error> {
        let m = message.to_ascii_lowercase();
        let owned = || message.to_string();
        if m.contains("has been compacted") || m.contains("is compacted") || m.contains("are compacted") {
            return Some(Error::Compacted { requested: 0, compact_revision: 0 });
        }
        if m.contains("lease not found") || m.starts_with("unknown lease") {
            return Some(Error::LeaseNotFound { message: owned() });
        }
        if m.contains("etcdserver: key not found") {
            return Some(Error::KeyNotFound { message: owned() });
        }
        if m.contains("election: no leader") {
            return Some(Error::NoLeader);
        }
        if m.contains("election: not leader") {
            return Some(Error::NotLeader);
        }
        if m.contains("invalid auth token")
            || m.contains("user name is empty")
            || m.contains("authentication failed")
        {
            return Some(Error::Unauthenticated { message: owned() });
        }
        if m.contains("permission denied") {
            return Some(Error::PermissionDenied { message: owned() });
        }
        None
    }
}

/// The first bytes of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]).into_owned();
    if body.len() > MAX {
        format!("{text}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bodies captured from etcd 3.4 and antietcd 1.3.1 map to the right variants.
    #[test]
    fn maps_captured_replies() {
        type Check = fn(&Error) -> bool;
        let cases: &[(u16, &str, Check)] = &[
            (
                404,
                r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#,
                |e| matches!(e, Error::LeaseNotFound { .. }),
            ),
            (
                400,
                r#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#,
                |e| matches!(e, Error::Compacted { .. }),
            ),
            (
                400,
                r#"{"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11}"#,
                |e| matches!(e, Error::OutOfRange { .. }),
            ),
            (
                401,
                r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#,
                |e| matches!(e, Error::Unauthenticated { .. }) && e.is_token_problem(),
            ),
            (
                412,
                r#"{"error":"etcdserver: lease already exists","message":"etcdserver: lease already exists","code":9}"#,
                |e| matches!(e, Error::FailedPrecondition { .. }),
            ),
            (500, r#"{"error":"election: no leader","message":"election: no leader","code":2}"#, |e| {
                matches!(e, Error::NoLeader)
            }),
            (
                400,
                r#"{"error":"etcdserver: key not found","message":"etcdserver: key not found","code":3}"#,
                |e| matches!(e, Error::KeyNotFound { .. }),
            ),
            (503, r#"{"message":"etcdserver: no leader","code":14}"#, |e| e.is_retryable()),
            (400, "unknown lease: 0123456789abcdef\n", |e| matches!(e, Error::LeaseNotFound { .. })),
            (501, "Non-directory range queries are unsupported\n", |e| {
                matches!(e, Error::Unimplemented { .. })
            }),
            (502, "Server is stopping\n", |e| matches!(e, Error::Unavailable { .. })),
            (405, "Method Not Allowed", |e| matches!(e, Error::Http { status: 405, .. })),
        ];
        for (status, body, check) in cases {
            let err = Error::from_reply(*status, body.as_bytes());
            assert!(check(&err), "{status} {body} mapped to {err:?}");
        }
    }
}
