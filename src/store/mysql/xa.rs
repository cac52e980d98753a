//! A sync commit's replica side on MySQL / MariaDB: XA (decision 0016; the XA facts are in the shared MYSQL.md, §3).
//!
//! - [`ReplicaConn`]: capgate's own connection to a replica, marked as an apply session;
//! - [`ReplicaConn::prepare`]: `XA START`, the rows, `XA END`, `XA PREPARE` in one
//!   multi-statement round trip, giving a [`PreparedBranch`];
//! - [`PreparedBranch`]: the only handle on a connection that holds a prepared branch. It can
//!   commit or roll back the branch, nothing else: it cannot be reset, have its user changed
//!   or be returned to a pool (a `COM_RESET_CONNECTION` or `COM_CHANGE_USER` there makes a
//!   later `XA COMMIT` answer OK and commit nothing — MYSQL.md §3.3). Dropped unresolved, its
//!   connection closes, the branch stays prepared on the server, and recovery resolves it;
//! - [`recover`]: `XA RECOVER` filtered by capgate's gid prefix, resolved by the decision
//!   records on the primary, with the same fence as PostgreSQL (decision 0009): `XAER_NOTA`
//!   cannot tell "committed" from "never existed", so the record is the truth.
//!
//! An XA id is `'<gid>','<thread>'`: the global transaction id, and as branch qualifier the
//! server thread id of the connection that prepared it. While that connection lives the
//! server refuses a commit from any other session (`XAER_NOTA`), so recovery, whichever
//! process runs it, knows which connection to KILL first — but only a connection that still
//! held the branch a round earlier ([`Held`]): under load, a round finds branches whose own
//! `XA COMMIT` is on its way, and killing their connections would leave them (and their row
//! locks) to the next round.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use super::image::quote_literal;
use super::primary::APPLY_MARKER;
use crate::config::{DbUrl, RootCert, SslMode};
use crate::replicate::coordinator::PrepareFailure;
pub use crate::replicate::recovery::RecoveryReport;

/// The SQLSTATE `capgate.expect_rows` raises when a replica's row is missing or differs.
const CONFLICT: &str = "CGC01";

/// MySQL error codes XA answers with.
const XAER_NOTA: u16 = 1397;
const XAER_RMFAIL: u16 = 1399;
const XA_RBROLLBACK: u16 = 1402;
const DUP_ENTRY: u16 = 1062;
const LOCK_WAIT_TIMEOUT: u16 = 1205;
const NO_SUCH_THREAD: u16 = 1094;

/// Why a replica connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum XaError {
    #[error("{0}")]
    Connect(mysql_async::Error),
    #[error("{0}")]
    Server(mysql_async::Error),
}

/// mysql_async options for `url`, with CLIENT_FOUND_ROWS (an UPDATE that leaves a row as it
/// was still counts as matched; the apply checks row counts) and TLS as the URL's `sslmode`
/// says, with the meanings libpq gives it: `require` encrypts without verifying,
/// `verify-ca` checks the chain against `sslrootcert`, `verify-full` the host name too.
/// `prefer` asks for TLS here; [`connect`] falls back to plain text when the server offers
/// none.
pub fn opts(url: &DbUrl) -> mysql_async::Opts {
    tls_opts(url, url.sslmode != SslMode::Disable)
}

fn tls_opts(url: &DbUrl, tls: bool) -> mysql_async::Opts {
    let builder = mysql_async::OptsBuilder::default()
        .ip_or_hostname(url.host.clone())
        .tcp_port(url.port)
        .user(url.user.clone())
        .pass(url.password.clone())
        .db_name(url.dbname.clone())
        .prefer_socket(false)
        .client_found_rows(true)
        .ssl_opts(tls.then(|| ssl_opts(url)));
    builder.into()
}

fn ssl_opts(url: &DbUrl) -> mysql_async::SslOpts {
    // As libpq: `require` with a root certificate verifies the chain, as `verify-ca` does.
    let verify =
        matches!(url.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) || (url.sslmode == SslMode::Require && url.sslrootcert.is_some());
    let roots = match &url.sslrootcert {
        Some(RootCert::File(path)) => vec![path.clone().into()],
        // The operating system's bundle, where Debian keeps it (mysql_async's default roots
        // are a compiled-in copy of Mozilla's).
        Some(RootCert::System) => vec![std::path::PathBuf::from(SYSTEM_ROOTS).into()],
        None => Vec::new(),
    };
    let identity = match (&url.sslcert, &url.sslkey) {
        (Some(cert), Some(key)) => Some(mysql_async::ClientIdentity::new(cert.clone().into(), key.clone().into())),
        _ => None,
    };
    mysql_async::SslOpts::default()
        .with_root_certs(if verify { roots } else { Vec::new() })
        .with_client_identity(identity)
        .with_danger_accept_invalid_certs(!verify)
        .with_danger_skip_domain_validation(url.sslmode != SslMode::VerifyFull)
}

/// Where Debian keeps the system's certificate bundle (`sslrootcert=system`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Open a connection to `url` with [`opts`]; with `sslmode=prefer`, in plain text when the
/// server offers no TLS.
pub async fn connect(url: &DbUrl) -> Result<mysql_async::Conn, mysql_async::Error> {
    match mysql_async::Conn::new(opts(url)).await {
        Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)) if url.sslmode == SslMode::Prefer => {
            mysql_async::Conn::new(tls_opts(url, false)).await
        }
        other => other,
    }
}

/// capgate's connection to one replica, marked as an apply session (its writes are never
/// captured again, it applies in UTC and utf8mb4).
pub struct ReplicaConn {
    conn: mysql_async::Conn,
}

impl ReplicaConn {
    /// Connect within `timeout` and mark the session.
    pub async fn connect(url: &DbUrl, timeout: Duration) -> Result<ReplicaConn, XaError> {
        let mut conn = match tokio::time::timeout(timeout, connect(url)).await {
            Ok(c) => c.map_err(XaError::Connect)?,
            Err(_) => return Err(XaError::Connect(mysql_async::Error::Other("connection timed out".into()))),
        };
        conn.query_drop(APPLY_MARKER).await.map_err(XaError::Server)?;
        Ok(ReplicaConn { conn })
    }

    /// The server's thread id of this connection (to KILL it if it is left holding a branch).
    pub fn thread(&self) -> u32 {
        self.conn.id()
    }

    /// The connection, for reading the replica's catalog (never while a branch is prepared:
    /// a [`PreparedBranch`] does not give it out).
    pub fn conn(&mut self) -> &mut mysql_async::Conn {
        &mut self.conn
    }

    /// Apply `statements` (from [`super::apply::statements`]) inside XA branch `gid` and
    /// prepare it, in one round trip. On failure the connection is given back when it is
    /// still usable (the branch rolled back), with why the replica could not prepare.
    pub async fn prepare(mut self, gid: &str, statements: &str) -> Result<PreparedBranch, (Option<ReplicaConn>, PrepareFailure)> {
        let xid = xid(gid, &self.conn.id().to_string());
        let sql = format!("XA START {xid}; {statements} XA END {xid}; XA PREPARE {xid}");
        match self.conn.query_drop(sql).await {
            Ok(()) => Ok(PreparedBranch { conn: self.conn, gid: gid.to_owned(), xid }),
            Err(e) => {
                let failure = failure(&e);
                // The branch is ACTIVE (a statement failed) or gone: end and roll it back here,
                // on its own connection. A connection that cannot do that is dropped.
                let _ = self.conn.query_drop(format!("XA END {xid}")).await;
                match self.conn.query_drop(format!("XA ROLLBACK {xid}")).await {
                    Ok(()) => Err((Some(self), failure)),
                    Err(mysql_async::Error::Server(s)) if s.code == XAER_NOTA || s.code == XA_RBROLLBACK => Err((Some(self), failure)),
                    Err(_) => Err((None, failure)),
                }
            }
        }
    }
}

/// Why a replica could not prepare, as the coordinator sees it.
fn failure(e: &mysql_async::Error) -> PrepareFailure {
    match e {
        mysql_async::Error::Server(s) if s.state == CONFLICT => PrepareFailure::Conflict(s.message.clone()),
        mysql_async::Error::Server(s) if s.code == XAER_RMFAIL => {
            PrepareFailure::Misconfigured(format!("the replica refused XA: {} ({})", s.message, s.code))
        }
        mysql_async::Error::Server(s) if matches!(s.code, 1142 | 1143 | 1044 | 1045 | 1370 | 1227) => {
            PrepareFailure::Misconfigured(format!("capgate's account on the replica lacks a privilege: {}", s.message))
        }
        mysql_async::Error::Server(s) if matches!(s.code, 1146 | 1054 | 1305) => PrepareFailure::Misconfigured(format!(
            "{} — the replica's tables must match the primary's, and capgate installs capgate.expect_rows at start",
            s.message
        )),
        other => PrepareFailure::Unavailable(other.to_string()),
    }
}

/// A replica connection holding prepared XA branch `gid`. Commit or roll back, or drop (the
/// connection closes and recovery resolves the branch); nothing else is possible.
pub struct PreparedBranch {
    conn: mysql_async::Conn,
    gid: String,
    /// `'<gid>','<thread>'`.
    xid: String,
}

impl PreparedBranch {
    pub fn gid(&self) -> &str {
        &self.gid
    }

    /// The server's thread id of the owning connection.
    pub fn thread(&self) -> u32 {
        self.conn.id()
    }

    /// `XA COMMIT` on the owning connection (the only one the server lets commit while it is
    /// alive). The connection comes back for the next transaction; on error it is closed and
    /// the error returned (the branch is then detached, and recovery commits it).
    pub async fn commit(self) -> Result<ReplicaConn, (String, mysql_async::Error)> {
        self.finish("COMMIT").await
    }

    /// `XA ROLLBACK` on the owning connection.
    pub async fn rollback(self) -> Result<ReplicaConn, (String, mysql_async::Error)> {
        self.finish("ROLLBACK").await
    }

    async fn finish(mut self, verb: &str) -> Result<ReplicaConn, (String, mysql_async::Error)> {
        match self.conn.query_drop(format!("XA {verb} {}", self.xid)).await {
            Ok(()) => Ok(ReplicaConn { conn: self.conn }),
            Err(e) => Err((self.gid, e)),
        }
    }
}

/// The XA id of branch `bqual` of `gid`, as SQL.
fn xid(gid: &str, bqual: &str) -> String {
    format!("{}, {}", quote_literal(gid), quote_literal(bqual))
}

/// One prepared branch as `XA RECOVER` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Branch {
    pub gid: String,
    /// The thread id of the connection that prepared it.
    pub owner: String,
}

/// Every XA branch on the replica whose gid starts with `prefix`.
pub async fn prepared(replica: &mut mysql_async::Conn, prefix: &str) -> Result<Vec<Branch>, mysql_async::Error> {
    let rows: Vec<(i64, i64, i64, Vec<u8>)> = replica.query("XA RECOVER").await?;
    Ok(rows
        .into_iter()
        .filter_map(|(_, gtrid_len, bqual_len, data)| {
            let split = usize::try_from(gtrid_len).ok()?;
            let end = split + usize::try_from(bqual_len).ok()?;
            let gid = String::from_utf8(data.get(..split)?.to_vec()).ok()?;
            let owner = String::from_utf8(data.get(split..end)?.to_vec()).ok()?;
            gid.starts_with(prefix).then_some(Branch { gid, owner })
        })
        .collect())
}

/// The branches a recovery round could not resolve because the connection that prepared
/// them was alive (the server answered `XAER_NOTA`). Kept from one round of one replica to
/// the next: a branch still held by the same connection a round later is stuck (its
/// coordinator died, or lost the connection to a half-open link), and its connection is
/// killed; one seen for the first time is usually a commit whose own `XA COMMIT` is on its way.
#[derive(Debug, Default)]
pub struct Held(std::collections::HashSet<Branch>);

/// Resolve every prepared branch of `prefix` on `replica` by the decision records on
/// `primary`; `held` is what the previous round of this replica left (see [`Held`]).
///
/// For a branch without a committed decision, recovery records the abort first (committed =
/// false): that insert waits for a coordinator whose primary transaction holds the same gid
/// uncommitted, so a late primary COMMIT and this rollback can never both happen. A wait
/// longer than a second leaves the branch for a later round. A branch whose owning connection
/// is still alive (the server answers `XAER_NOTA`) is left for the next round the first time;
/// when the same connection still holds it then, it is resolved after killing that connection,
/// when it belongs to the same account as recovery's own (so a thread id reused after a
/// replica restart never kills someone else's connection).
pub async fn recover(
    primary: &mut mysql_async::Conn,
    replica: &mut mysql_async::Conn,
    prefix: &str,
    held: &mut Held,
) -> Result<RecoveryReport, mysql_async::Error> {
    let mut still_held = Held::default();
    primary.query_drop("SET SESSION innodb_lock_wait_timeout = 1").await?;
    let me: Option<String> = replica.query_first("SELECT SUBSTRING_INDEX(USER(), '@', 1)").await?;
    let mut report = RecoveryReport::default();
    for branch in prepared(replica, prefix).await? {
        let gid = branch.gid.clone();
        let commit = match decision(primary, &gid).await? {
            Some(committed) => committed,
            None => match primary
                .exec_drop(
                    "INSERT INTO capgate.decisions (gid, origin, committed, at) VALUES (?, 'recovery', FALSE, UTC_TIMESTAMP(6))",
                    (gid.as_str(),),
                )
                .await
            {
                Ok(()) => false,
                Err(mysql_async::Error::Server(s)) if s.code == DUP_ENTRY => decision(primary, &gid).await?.unwrap_or(false),
                Err(mysql_async::Error::Server(s)) if s.code == LOCK_WAIT_TIMEOUT => {
                    report.left.push(gid);
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        let resolve = format!("XA {verb} {}", xid(&branch.gid, &branch.owner));
        let mut result = replica.query_drop(&resolve).await;
        if matches!(&result, Err(mysql_async::Error::Server(s)) if s.code == XAER_NOTA) {
            if !held.0.contains(&branch) {
                if owner_alive(replica, &branch).await? {
                    still_held.0.insert(branch);
                    report.left.push(gid);
                    continue;
                }
            } else if kill_owner(replica, &branch, me.as_deref()).await? {
                result = replica.query_drop(&resolve).await;
            }
        }
        match result {
            Ok(()) if commit => report.committed.push(gid),
            Ok(()) => report.rolled_back.push(gid),
            // Finished by its owner (or another capgate) since the listing: gone.
            Err(mysql_async::Error::Server(s)) if s.code == XAER_NOTA => report.gone.push(gid),
            Err(e) => return Err(e),
        }
    }
    *held = still_held;
    Ok(report)
}

/// Whether the connection that prepared `branch` is alive.
async fn owner_alive(replica: &mut mysql_async::Conn, branch: &Branch) -> Result<bool, mysql_async::Error> {
    let Ok(id) = branch.owner.parse::<u64>() else { return Ok(false) };
    let alive: Option<u64> = replica.exec_first("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = ?", (id,)).await?;
    Ok(alive.is_some())
}

/// KILL the connection that prepared `branch`, if it is alive and is `user`'s: whether it was.
async fn kill_owner(replica: &mut mysql_async::Conn, branch: &Branch, user: Option<&str>) -> Result<bool, mysql_async::Error> {
    let Ok(id) = branch.owner.parse::<u64>() else { return Ok(false) };
    let owner: Option<String> = replica.exec_first("SELECT USER FROM information_schema.PROCESSLIST WHERE ID = ?", (id,)).await?;
    if owner.is_none() || owner.as_deref() != user {
        return Ok(false);
    }
    match replica.query_drop(format!("KILL CONNECTION {id}")).await {
        Ok(()) => {}
        Err(mysql_async::Error::Server(s)) if s.code == NO_SUCH_THREAD => {}
        Err(e) => return Err(e),
    }
    // KILL returns before the server has let go of the branch: wait (briefly) until it has.
    for _ in 0..50 {
        let alive: Option<u64> = replica.exec_first("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = ?", (id,)).await?;
        if alive.is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(true)
}

/// The decision recorded for `gid` on the primary, if any.
async fn decision(primary: &mut mysql_async::Conn, gid: &str) -> Result<Option<bool>, mysql_async::Error> {
    primary.exec_first("SELECT committed FROM capgate.decisions WHERE gid = ?", (gid,)).await
}
