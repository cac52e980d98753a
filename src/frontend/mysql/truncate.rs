//! A TRUNCATE of a replicated table, carried to every replica in capture order (decision
//! 0029), held like a COMMIT (`super::hold`) and run in place of the client's statement.
//!
//! MySQL's TRUNCATE fires no trigger, so capture would never see the rows go. Once the
//! open transaction is committed (coordinated, as the TRUNCATE's implicit commit would),
//! capgate runs on the client's own connection one transaction that locks the whole table,
//! deletes its rows — the capture trigger records one change `T` at the first row — and
//! commits (for a sync table, with the coordinated commit: the replicas delete in the same
//! XA branch). The shipper carries `T` in `seq` order and the replica applies it as `DELETE
//! FROM` in the batch's transaction, with the position: exactly once. The client gets the
//! COMMIT's OK (0 rows, as TRUNCATE reports), or the error of the step that failed, after
//! which the session is as it was (markers restored, nothing deleted).
//!
//! Refused as TRUNCATE would be, with the server's error: a table another table's foreign
//! key references while `foreign_key_checks` is on (1701). Refused by capgate: a table with
//! DELETE triggers of its own (a DELETE fires them, TRUNCATE does not).

use tokio::io::AsyncWrite;

use super::hold::{answer, coordinate, error_of, query, Commit, RelayPrimary};
use super::relay::{PumpError, SessionState};
use super::statements::Statements;
use super::sync::Outcome;
use crate::classify::TableName;
use crate::protocol::mysql::rows::text_rows;
use crate::protocol::mysql::{errors, packet};
use crate::store::mysql::truncate::{self, Catalog};
use crate::store::mysql::xa;

/// A TRUNCATE capgate carries: the table, and its mode and rule for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub table: TableName,
    pub mode: &'static str,
    pub rule: String,
}

/// Why a step of the carried TRUNCATE stopped (the client's answer, or the session's end).
enum Stop {
    /// The primary connection failed: the session ends.
    Broken(PumpError),
    /// This reply (the primary's ERR, or capgate's own) answers the TRUNCATE; the session
    /// goes on outside a transaction.
    Answer(Vec<u8>),
}

/// Carry the TRUNCATE of `target` (no transaction is open: the caller committed it).
pub async fn carry<W>(state: &SessionState, server: &mut W, statements: &mut Statements, target: &Target) -> Result<(), PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let catalog = match read_catalog(statements, &target.table).await {
        Ok(c) => c,
        Err(e) => {
            let message = format!(
                "capgate could not carry this TRUNCATE of {} (mode {}, rule {}): reading the primary's catalog failed ({e}); \
                 nothing was deleted, retry",
                target.table, target.mode, target.rule
            );
            answer(state, Outcome::Failed, Some(packet::err(1, errors::CAPTURE_NOT_READY, &message)));
            return Ok(());
        }
    };
    if let Some(trigger) = catalog.delete_triggers.first() {
        let message = format!(
            "capgate refused `TRUNCATE {}`: the table is replicated (mode {}, rule {}) and TRUNCATE fires no trigger on \
             MySQL, so capgate carries it as a DELETE of every row, which would fire the table's own DELETE trigger `{trigger}` \
             where TRUNCATE does not; nothing was deleted. Use DELETE FROM {} if the trigger should run, or drop the trigger",
            target.table, target.mode, target.rule, target.table
        );
        answer(state, Outcome::Failed, Some(packet::err(1, errors::NOT_SUPPORTED, &message)));
        return Ok(());
    }
    let deprecate_eof = statements.deprecate_eof();
    let mut primary = RelayPrimary::new(state, server, statements, Commit::Own);
    let ran = run(&mut primary, target, &catalog, deprecate_eof).await;
    let failed = primary.failed.take();
    drop(primary);
    match (failed, ran) {
        (Some(e), _) | (None, Err(Stop::Broken(e))) => Err(e),
        (None, Err(Stop::Answer(reply))) => {
            answer(state, Outcome::Failed, Some(reply));
            Ok(())
        }
        (None, Ok(())) => {
            // The rows are gone on the primary; now the commit (coordinated when the table
            // is sync: the replicas delete in the same XA branch).
            let (outcome, reply) = coordinate(state, server, statements, Commit::Own).await?;
            if outcome == Outcome::Committed && catalog.auto_increment {
                reset_auto_increment(state, server, statements, &target.table).await?;
            }
            answer(state, outcome, reply);
            Ok(())
        }
    }
}

/// How long reading the table's catalog may take.
const CATALOG_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The table's catalog, on capgate's own connection to the primary.
async fn read_catalog(statements: &Statements, table: &TableName) -> Result<Catalog, String> {
    let url = &statements.shared().config.primary.url;
    let read = async {
        let mut conn = xa::connect(url).await.map_err(|e| e.to_string())?;
        let got = truncate::catalog(&mut conn, table).await.map_err(|e| e.to_string());
        let _ = conn.disconnect().await;
        got
    };
    tokio::time::timeout(CATALOG_DEADLINE, read).await.unwrap_or_else(|_| Err(format!("no answer within {CATALOG_DEADLINE:?}")))
}

/// Steps 1 to 4 of `store::mysql::truncate`: on success the transaction is open with the
/// rows deleted and the record written; on an answer it has been rolled back and the
/// session's markers restored.
async fn run<W>(primary: &mut RelayPrimary<'_, W>, target: &Target, catalog: &Catalog, deprecate_eof: bool) -> Result<(), Stop>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let table = &target.table;
    let mut first: Vec<Vec<u8>> = truncate::begin(table).iter().map(|s| query(s)).collect();
    first.push(query("SELECT @capgate_fk"));
    let replies = own(primary, &first).await?;
    let failed = replies.iter().find(|r| error_of(r).is_some()).cloned();
    let checks_on = replies.last().and_then(|r| first_value(deprecate_eof, r)).as_deref() == Some("1");
    if let Some(reply) = failed {
        return Err(undo(primary, reply).await);
    }
    if let (true, Some(child)) = (checks_on, &catalog.referenced_by) {
        let refusal = packet::err(1, truncate::TRUNCATE_ILLEGAL_FK, &truncate::illegal_fk_message(child));
        return Err(undo(primary, refusal).await);
    }
    // One statement at a time: after a failure (a deadlock rolls the transaction back) the
    // next must not run outside it.
    let locked = own(primary, &[query(&truncate::lock(table))]).await?.remove(0);
    if error_of(&locked).is_some() {
        return Err(undo(primary, locked).await);
    }
    let rows = first_value(deprecate_eof, &locked).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let deleted = own(primary, &[query(&truncate::delete(table))]).await?.remove(0);
    if error_of(&deleted).is_some() {
        return Err(undo(primary, deleted).await);
    }
    let checked = own(primary, &[query(truncate::RECORDED), query(truncate::RESTORE)]).await?;
    let recorded = first_value(deprecate_eof, &checked[0]).is_some();
    if let Some(reply) = checked.iter().find(|r| error_of(r).is_some()).cloned() {
        return Err(undo(primary, reply).await);
    }
    if rows > 0 && !recorded {
        let message = format!(
            "capgate refused `TRUNCATE {table}` (mode {}, rule {}): the table's capture trigger on the primary did not record \
             it (capgate cannot capture this table: its log says why, e.g. no primary key), so the replicas would keep the \
             rows; nothing was deleted",
            target.mode, target.rule
        );
        return Err(undo(primary, packet::err(1, errors::CAPTURE_NOT_READY, &message)).await);
    }
    Ok(())
}

/// capgate's own commands; a broken connection stops the session.
async fn own<W>(primary: &mut RelayPrimary<'_, W>, payloads: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Stop>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    match primary.own(&refs).await {
        Some(replies) => Ok(replies),
        None => Err(Stop::Broken(
            primary.failed.take().unwrap_or_else(|| PumpError::Io(std::io::Error::other("the primary closed the connection"))),
        )),
    }
}

/// Restore the session's markers and roll the transaction back; `reply` then answers the
/// TRUNCATE.
async fn undo<W>(primary: &mut RelayPrimary<'_, W>, reply: Vec<u8>) -> Stop
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    match own(primary, &[query(truncate::RESTORE), query("ROLLBACK")]).await {
        Ok(_) => Stop::Answer(reply),
        Err(stop) => stop,
    }
}

/// The first column of the first row of a result set, as text (None: NULL, no row, an error).
fn first_value(deprecate_eof: bool, reply: &[u8]) -> Option<String> {
    let rows = text_rows(reply, deprecate_eof).ok()?;
    let value = rows.into_iter().next()?.into_iter().next()??;
    Some(String::from_utf8_lossy(&value).into_owned())
}

/// Step 5: TRUNCATE resets the AUTO_INCREMENT counter; InnoDB makes `1` the largest value in
/// use plus one. A failure (no ALTER privilege) is logged: the rows are gone on every site
/// already, and only the counter differs from a real TRUNCATE.
async fn reset_auto_increment<W>(state: &SessionState, server: &mut W, statements: &Statements, table: &TableName) -> Result<(), PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let mut primary = RelayPrimary::new(state, server, statements, Commit::Own);
    let reply = primary.own(&[&query(&truncate::reset_auto_increment(table))]).await;
    if let Some(e) = primary.failed.take() {
        return Err(e);
    }
    if let Some(e) = reply.as_ref().and_then(|r| r.first()).and_then(|r| error_of(r)) {
        tracing::warn!(%table, "after a TRUNCATE carried as a DELETE, its AUTO_INCREMENT counter could not be reset: {e}");
    }
    Ok(())
}
