//! The client's one error type: what went wrong talking to a server, in words a caller can act on.

/// Why a call did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server address given is not an `http://` or `https://` URL.
    #[error("'{0}' is not an http:// or https:// URL")]
    BadServer(String),
    /// No answer: the connection was refused, timed out or broke off.
    #[error("cannot reach {server}: {reason}")]
    Unreachable {
        /// The server's base URL.
        server: String,
        /// The innermost cause, as the operating system or TLS library gave it.
        reason: String,
    },
    /// The server answered with an error status; `message` is its `technicalMessage`.
    #[error("the server answered {status}: {message}")]
    Api {
        /// The HTTP status code.
        status: u16,
        /// The server's explanation, or the status's reason phrase when it gave none.
        message: String,
    },
    /// The server's answer does not have the documented shape.
    #[error("the server's answer is not what the API documents: {0}")]
    BadAnswer(String),
    /// A value given to the client cannot be sent (it is not representable as JSON, for one).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The HTTP status of an [`Error::Api`] answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying the same call again later may succeed: no answer at all, a server error
    /// (5xx), or a request to slow down (429). A caller's mistake (other 4xx) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// A 409 from a task call: the lease is stale (expired and maybe taken over) or unknown,
    /// and nothing was recorded.
    pub fn is_lease_lost(&self) -> bool {
        self.status() == Some(409)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_answers_server_errors_and_429_are_transient() {
        let api = |status| Error::Api { status, message: String::new() };
        assert!(Error::Unreachable { server: "s".into(), reason: "r".into() }.is_transient());
        assert!(api(503).is_transient() && api(500).is_transient() && api(429).is_transient());
        assert!(!api(400).is_transient() && !api(401).is_transient() && !api(409).is_transient());
        assert!(api(409).is_lease_lost() && !api(400).is_lease_lost());
        assert!(!Error::BadAnswer("x".into()).is_transient());
    }
}
