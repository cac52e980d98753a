//! Whether capgate's functions are installed on one MySQL / MariaDB replica (decision 0038).
//!
//! A sync commit's statements call `capgate.expect_rows` on the replica ([`super::apply`]), so
//! the replica must have it before the first commit goes there. At start capgate installs it on
//! every replica that answers; a replica that cannot be reached then (a partition while capgate
//! restarts) does not stop the start: it is *not set up*, sync commits do not go to it, and the
//! health loop's connection installs the functions as soon as the replica answers
//! (`sites::mysql::MyConnector::replica`): until then the replica cannot leave `partitioned`.
//!
//! What may never happen here: a replica that answers "no" to capgate's credentials or
//! privileges looking like one that is merely unreachable at start ([`ReplicaSetupError::retry_helps`]):
//! a typo in the URL must fail the start, not wait silently.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::apply;
use super::xa;
use crate::config::DbUrl;

/// Server error codes that say the replica refused capgate's account or a privilege it needs
/// (and an unknown database in the URL): trying again changes nothing until an operator
/// acts. Every other server error (too many connections, shutting down, a lock wait) is
/// treated like an unreachable replica.
const REFUSALS: &[u16] = &[
    1044, // ER_DBACCESS_DENIED_ERROR
    1045, // ER_ACCESS_DENIED_ERROR
    1049, // ER_BAD_DB_ERROR
    1142, // ER_TABLEACCESS_DENIED_ERROR
    1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
    1251, // ER_NOT_SUPPORTED_AUTH_MODE
    1370, // ER_PROCACCESS_DENIED_ERROR
    1419, // ER_BINLOG_CREATE_ROUTINE_NEED_SUPER
    1524, // ER_PLUGIN_IS_NOT_LOADED
    1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    1862, // ER_MUST_CHANGE_PASSWORD_LOGIN
    4151, // ER_ACCOUNT_HAS_BEEN_LOCKED (MariaDB)
];

/// Why a replica could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaSetupError {
    #[error("cannot connect: {0}")]
    Connect(mysql_async::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("installing capgate's functions (the `capgate` database and capgate.expect_rows): {0}")]
    Install(mysql_async::Error),
}

impl ReplicaSetupError {
    /// Whether the same attempt may succeed later without an operator: the replica could not
    /// be reached, or answered with a passing error. False when it refused capgate's
    /// credentials or privileges, or when the URL's TLS settings cannot work with it.
    pub fn retry_helps(&self) -> bool {
        let e = match self {
            ReplicaSetupError::Timeout(_) => return true,
            ReplicaSetupError::Connect(e) | ReplicaSetupError::Install(e) => e,
        };
        match e {
            mysql_async::Error::Server(s) => !REFUSALS.contains(&s.code),
            mysql_async::Error::Io(mysql_async::IoError::Tls(_)) => false,
            mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => false,
            mysql_async::Error::Url(_) => false,
            _ => true,
        }
    }
}

/// One replica's setup state, shared by the start, its health loop's connector, the sync
/// commits (which admit the replica only once it is set up) and the recovery loop (which runs
/// a round on a replica set up late at once rather than within its interval).
pub struct ReplicaSetup {
    /// The replica's configured name, for log lines.
    name: String,
    /// Whether the functions are installed (set once, never cleared: they stay on the server).
    installed: watch::Sender<bool>,
    /// Why the last attempt failed, for messages (None: none failed yet).
    last_failure: Mutex<Option<String>>,
    /// Woken when a replica of this listener is set up after the start.
    set_up_late: Arc<Notify>,
}

impl ReplicaSetup {
    pub fn new(name: &str, set_up_late: Arc<Notify>) -> Arc<ReplicaSetup> {
        Arc::new(ReplicaSetup { name: name.to_owned(), installed: watch::Sender::new(false), last_failure: Mutex::new(None), set_up_late })
    }

    /// Whether sync commits may go to the replica as far as its setup goes.
    pub fn installed(&self) -> bool {
        *self.installed.borrow()
    }

    /// Waits (at most `timeout`) until the replica is set up; whether it is.
    pub async fn wait_installed(&self, timeout: Duration) -> bool {
        let mut rx = self.installed.subscribe();
        let installed = matches!(tokio::time::timeout(timeout, rx.wait_for(|i| *i)).await, Ok(Ok(_)));
        installed
    }

    /// Why the replica is not set up yet, for refusals and `/status`.
    pub fn why_not(&self) -> String {
        match self.last_failure.lock().unwrap_or_else(|p| p.into_inner()).as_deref() {
            Some(why) => format!("capgate's functions are not installed there yet: {why}"),
            None => "capgate's functions are not installed there yet".into(),
        }
    }

    /// At start: connect to `url` within its `connect_timeout` and install the functions.
    pub async fn at_start(&self, url: &DbUrl) -> Result<(), ReplicaSetupError> {
        let attempt = async {
            let mut conn = xa::connect(url).await.map_err(ReplicaSetupError::Connect)?;
            let installed = apply::create_functions(&mut conn).await.map_err(ReplicaSetupError::Install);
            let _ = conn.disconnect().await;
            installed
        };
        // The install takes metadata locks: a branch left prepared by an earlier process can
        // hold one, so it is bounded too (recovery resolves the branch; the health loop retries).
        let result = match tokio::time::timeout(url.connect_timeout * 2, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ReplicaSetupError::Timeout(url.connect_timeout * 2)),
        };
        match &result {
            Ok(()) => {
                self.installed.send_replace(true);
            }
            Err(e) => *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string()),
        }
        result
    }

    /// On a connection to the replica (the health loop's, as it connects): install the
    /// functions unless they are. The error says why not; the health loop then counts the
    /// replica unreachable, so it stays partitioned.
    pub async fn ensure(&self, conn: &mut mysql_async::Conn) -> Result<(), ReplicaSetupError> {
        if self.installed() {
            return Ok(());
        }
        match apply::create_functions(conn).await {
            Ok(()) => {
                self.installed.send_replace(true);
                info!(replica = %self.name, "capgate's functions are installed on the replica; sync commits go to it once it is healthy");
                self.set_up_late.notify_one();
                Ok(())
            }
            Err(e) => {
                let e = ReplicaSetupError::Install(e);
                let text = e.to_string();
                let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_deref() != Some(text.as_str()) {
                    let remedy = if e.retry_helps() { "retrying" } else { "grant capgate's replica account what it needs" };
                    warn!(replica = %self.name, "the replica answers, but {text}; it stays partitioned ({remedy})");
                }
                *last = Some(text);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError { code, message: "m".into(), state: "HY000".into() })
    }

    #[test]
    fn refused_credentials_and_privileges_are_not_retried_an_unreachable_replica_is() {
        assert!(!ReplicaSetupError::Connect(server(1045)).retry_helps(), "access denied");
        assert!(!ReplicaSetupError::Install(server(1044)).retry_helps(), "no CREATE ROUTINE on capgate");
        assert!(!ReplicaSetupError::Connect(server(1049)).retry_helps(), "unknown database in the URL");
        assert!(ReplicaSetupError::Connect(server(1040)).retry_helps(), "too many connections passes");
        assert!(ReplicaSetupError::Install(server(1205)).retry_helps(), "a lock wait passes");
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(ReplicaSetupError::Connect(mysql_async::Error::Io(mysql_async::IoError::Io(refused))).retry_helps());
        assert!(ReplicaSetupError::Timeout(Duration::from_secs(1)).retry_helps());
    }

    #[tokio::test]
    async fn a_replica_set_up_late_wakes_whoever_waits_for_it() {
        let setup = ReplicaSetup::new("east", Arc::new(Notify::new()));
        assert!(!setup.installed());
        assert!(!setup.wait_installed(Duration::from_millis(1)).await);
        assert_eq!(setup.why_not(), "capgate's functions are not installed there yet");
        setup.installed.send_replace(true);
        assert!(setup.wait_installed(Duration::from_millis(1)).await);
    }
}
