//! Errors of replica operations, and the deadline every one of them runs under.
//!
//! A silent partition hangs a TCP connection for minutes, so no replica operation may wait
//! on the network without a deadline: [`with_deadline`] is how they all wait, and its error
//! names the replica and the operation so a DBA reading the log knows which link to look at.

use std::future::Future;
use std::time::Duration;

/// Any error a protocol-specific connector reports (tokio-postgres, later mysql_async).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a replica operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The operation did not finish in time; the replica may be partitioned or overloaded.
    #[error("replica `{replica}`: {operation} did not finish within {deadline:?}")]
    Deadline { replica: String, operation: String, deadline: Duration },
    /// The operation failed (connection refused or broken, a server error, a bad login).
    /// The message carries the whole chain of causes: drivers often put the useful part
    /// ("connection refused") in a source under a generic "error communicating".
    #[error("replica `{replica}`: {operation}: {}", chain(source.as_ref()))]
    Failed {
        replica: String,
        operation: String,
        #[source]
        source: BoxError,
    },
    /// The replica's health loop is gone (capgate is shutting down).
    #[error("replica `{replica}`: its health monitor has stopped")]
    Stopped { replica: String },
}

impl SiteError {
    /// The replica the error is about.
    pub fn replica(&self) -> &str {
        match self {
            SiteError::Deadline { replica, .. } | SiteError::Failed { replica, .. } | SiteError::Stopped { replica } => replica,
        }
    }

    /// Whether the operation ran out of time (as opposed to failing).
    pub fn is_deadline(&self) -> bool {
        matches!(self, SiteError::Deadline { .. })
    }

    pub(crate) fn failed(replica: &str, operation: &str, source: impl Into<BoxError>) -> SiteError {
        SiteError::Failed { replica: replica.to_owned(), operation: operation.to_owned(), source: source.into() }
    }
}

/// `error: its source: its source's source`, skipping a source whose text is already there.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}

/// Runs `fut` for at most `deadline`. Its own error and running out of time both become a
/// [`SiteError`] that names `replica` and `operation` (e.g. "heartbeat", "connect",
/// "PREPARE TRANSACTION"). Dropping `fut` on timeout cancels it; a connection it was using
/// is then in an unknown state and must be dropped by the caller.
pub async fn with_deadline<T, E, F>(replica: &str, operation: &str, deadline: Duration, fut: F) -> Result<T, SiteError>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(SiteError::failed(replica, operation, e)),
        Err(_) => Err(SiteError::Deadline { replica: replica.to_owned(), operation: operation.to_owned(), deadline }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadline_names_the_replica_and_the_operation() {
        let never = std::future::pending::<Result<(), std::io::Error>>();
        let err = with_deadline("virginia", "heartbeat", Duration::from_millis(10), never).await.unwrap_err();
        assert!(err.is_deadline());
        assert_eq!(err.replica(), "virginia");
        assert_eq!(err.to_string(), "replica `virginia`: heartbeat did not finish within 10ms");
    }

    #[tokio::test]
    async fn failures_keep_their_source() {
        let refused = async { Err::<(), _>(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused")) };
        let err = with_deadline("b", "connect", Duration::from_secs(1), refused).await.unwrap_err();
        assert!(!err.is_deadline());
        assert_eq!(err.to_string(), "replica `b`: connect: refused");
        assert!(std::error::Error::source(&err).is_some());
        #[derive(Debug, thiserror::Error)]
        #[error("error communicating with the server")]
        struct Outer(#[source] std::io::Error);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        let err = with_deadline("b", "connect", Duration::from_secs(1), async { Err::<(), _>(Outer(reset)) }).await;
        let text = err.unwrap_err().to_string();
        assert_eq!(text, "replica `b`: connect: error communicating with the server: connection reset by peer");
        let ok = with_deadline("b", "x", Duration::from_secs(1), async { Ok::<_, std::io::Error>(7) }).await;
        assert_eq!(ok.unwrap(), 7);
    }
}
