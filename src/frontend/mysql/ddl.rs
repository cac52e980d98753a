//! DDL on a replicated table, carried to every MySQL replica in capture order (decision
//! 0040), held like a COMMIT (`super::hold`).
//!
//! Carried: `ALTER TABLE` (add, drop, modify, change or rename a column, add or drop an
//! index or key, table options …), `CREATE … INDEX … ON` and `DROP INDEX … ON` of a table a
//! sync, async or bounded rule matches, sent as a query of its own. The client's statement
//! runs on its own connection; then capgate, on a connection of its own, locks the table,
//! writes one change `S` with the statement into the change log and replaces the table's
//! capture triggers before it unlocks (`store::mysql::ddl`): every change captured in the
//! old shape ships before `S`, every change in the new shape after it. The shipper applies
//! `S` on each replica between two batches, exactly once. For a sync table every replica
//! runs the statement too while the table is still locked on the primary, before the client
//! gets the reply (refused, nothing run, while a replica is unavailable). The client gets
//! the statement's own reply, or, when it ran but could not be recorded (or, for a sync
//! table, a replica did not take it), an error saying what ran where and what follows.
//!
//! Refused (nothing run), each naming the table, its mode and rule, and the remedy: a rename
//! of a replicated table (`RENAME TABLE`, `ALTER TABLE … RENAME TO`); carried DDL inside a
//! multi-statement query, under the session's `LOCK TABLES`, or prepared.
//! Not carried, as before: `CREATE TABLE` and `DROP TABLE` (a table enters and leaves the
//! policy with them; a dump's restore drops and re-creates), DDL of tables no rule
//! replicates.

use mysql_async::prelude::Queryable;
use tokio::io::AsyncWrite;

use super::hold::{answer, error_of, query, RelayPrimary};
use super::relay::{PumpError, SessionState};
use super::statements::Statements;
use super::sync::Outcome;
use crate::classify::{Classification, Kind, TableName};
use crate::config::DbUrl;
use crate::policy::{Mode, Policy};
use crate::protocol::mysql::{errors, packet};
use crate::store::mysql::capture;
use crate::store::mysql::ddl::{self, Carried, Step};
use crate::store::mysql::ddl_catchup::{self, Pending};
use crate::store::mysql::xa::{self, ReplicaConn};
use crate::store::CaptureMode;

/// A DDL statement capgate carries: its table, and the table's mode and rule for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub table: TableName,
    pub mode: &'static str,
    pub rule: String,
    /// The table is sync: every replica runs the statement before the client gets the reply.
    pub sync: bool,
}

/// What capgate does with a query holding DDL of a replicated table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    Carry(Target),
    /// DDL capgate carries inside a multi-statement query: the query must run in parts, the
    /// statement a part of its own (`super::parts`); refused with this message when it
    /// cannot be cut.
    InParts(String),
    /// Refused with this message (ERR 1235, `42000`); nothing of the query runs.
    Refuse(String),
}

/// The DDL forms capgate tells apart.
#[derive(Debug, PartialEq, Eq)]
enum Form {
    /// `ALTER TABLE`, `CREATE … INDEX`, `DROP INDEX`: carried.
    Carried,
    /// A table renamed: refused.
    Rename,
    /// Anything else (`CREATE` / `DROP TABLE`, triggers, views, partition maintenance — the
    /// replicas' tables need not be partitioned alike —): as before.
    Other,
}

/// Whether `text` names partitions (`ADD PARTITION`, `PARTITION BY`, `REMOVE PARTITIONING`
/// …): an unquoted word, so a column named `` `partition` `` does not count.
fn names_partitions(text: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&sqlparser::dialect::MySqlDialect {}, text).tokenize() else { return true };
    tokens.iter().any(|t| {
        matches!(t, Token::Word(w) if w.quote_style.is_none()
            && ["partition", "partitions", "partitioning"].iter().any(|p| w.value.eq_ignore_ascii_case(p)))
    })
}

/// The first unquoted words of `text`, lower case, comments skipped: a migration tool's
/// `/* tag */ ALTER TABLE …` is the statement it holds. A statement that starts with an
/// executable comment (`/*!40000 ALTER TABLE t DISABLE KEYS */`, as a dump restore sends it,
/// before the replicas have the table) gives none: judged [`Form::Other`], as before.
fn words(text: &str) -> Vec<String> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let t = text.trim_start();
    if t.starts_with("/*!") || t.starts_with("/*M!") {
        return Vec::new();
    }
    match Tokenizer::new(&sqlparser::dialect::MySqlDialect {}, text).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .filter_map(|t| match t {
                Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
                _ => None,
            })
            .take(8)
            .collect(),
        Err(_) => text
            .split(|c: char| c.is_whitespace() || c == '(' || c == '`')
            .filter(|w| !w.is_empty())
            .take(8)
            .map(str::to_ascii_lowercase)
            .collect(),
    }
}

/// The form of DDL statement `text`, which names `writes` tables.
fn form(text: &str, writes: usize) -> Form {
    let w = words(text);
    let at = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let mut before_on = w.iter().take_while(|x| x.as_str() != "on");
    match at(0) {
        "rename" => Form::Rename,
        // `ALTER [ONLINE] [IGNORE] TABLE t … RENAME TO u` names both tables.
        "alter" if w.iter().take(4).any(|x| x == "table") => {
            if names_partitions(text) {
                Form::Other
            } else if writes > 1 {
                Form::Rename
            } else {
                Form::Carried
            }
        }
        "create" | "drop" if !w.iter().any(|x| x == "table") && before_on.any(|x| x == "index") => Form::Carried,
        _ => Form::Other,
    }
}

/// The statement's text, shortened for a message.
fn shown(text: &str) -> String {
    let t = text.trim();
    if t.chars().count() > 80 {
        format!("{}…", t.chars().take(80).collect::<String>())
    } else {
        t.to_owned()
    }
}

/// What to do with query `c` (its statements' texts `texts`) under `policy`; `locked`: the
/// session holds `LOCK TABLES`; `prepared`: it is being prepared (COM_STMT_PREPARE). None:
/// no DDL capgate carries or refuses.
pub fn judge(c: &Classification, texts: &[&str], policy: &Policy, locked: bool, prepared: bool) -> Option<Judged> {
    let n = c.statements.len();
    for (i, s) in c.statements.iter().enumerate() {
        if s.kind != Kind::Ddl {
            continue;
        }
        let Some(d) = s.writes.iter().map(|t| policy.decide_table(t)).find(|d| d.mode != Mode::Local) else { continue };
        let text = texts.get(i).copied().unwrap_or_default();
        let what = format!("{} (mode {}, rule {})", d.table, d.mode.name(), d.rule);
        match form(text, s.writes.len()) {
            Form::Other => continue,
            Form::Rename => {
                return Some(Judged::Refuse(format!(
                    "capgate refused `{}`: {what} is replicated, and capgate does not carry a table's rename to the MySQL \
                     replicas (its changes would be captured under a name the replicas do not have); nothing was run. To rename \
                     it, give the table mode \"local\" in the policy, rename it on every site, then give the new name its rule",
                    shown(text)
                )))
            }
            Form::Carried => {
                let refused = |why: &str, remedy: &str| {
                    Some(Judged::Refuse(format!(
                        "capgate refused `{}`: {what} is replicated, and capgate carries DDL of it to the replicas {why}; nothing \
                         was run. {remedy}",
                        shown(text)
                    )))
                };
                if prepared {
                    return refused("only when it is sent as a text query", "Send the statement as a query (not prepared)");
                }
                if locked {
                    return refused(
                        "under a table lock of its own, which cannot be taken while this session holds LOCK TABLES",
                        "UNLOCK TABLES first",
                    );
                }
                if n > 1 {
                    return match refused(
                        &format!(
                            "only as a statement it can run apart (it is statement {} of {n}, and capgate could not cut the query there)",
                            i + 1
                        ),
                        "Send the statement alone",
                    ) {
                        Some(Judged::Refuse(m)) => Some(Judged::InParts(m)),
                        other => other,
                    };
                }
                return Some(Judged::Carry(target_of(&d)));
            }
        }
    }
    None
}

fn target_of(d: &crate::policy::Decision) -> Target {
    Target { table: d.table.clone(), mode: d.mode.name(), rule: d.rule.to_string(), sync: matches!(d.mode, Mode::Sync { .. }) }
}

/// The statements of query `c` (texts `texts`) that are DDL capgate carries, with their
/// targets (`super::parts` runs each as a part of its own).
pub fn carried_at(c: &Classification, texts: &[&str], policy: &Policy) -> Vec<(usize, Target)> {
    c.statements
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == Kind::Ddl)
        .filter_map(|(i, s)| {
            let d = s.writes.iter().map(|t| policy.decide_table(t)).find(|d| d.mode != Mode::Local)?;
            (form(texts.get(i).copied().unwrap_or_default(), s.writes.len()) == Form::Carried).then(|| (i, target_of(&d)))
        })
        .collect()
}

/// How long capgate's own steps may wait for a lock (the serializing lock, the table lock,
/// a replica's metadata lock) and take on a replica.
const LOCK_WAIT_SECONDS: u32 = 30;

/// Carry the DDL `payload` of `target` (a COM_QUERY; no transaction is open, or one the DDL
/// commits implicitly: the caller coordinated a sync one); the client's reply is queued.
pub async fn carry<W>(
    state: &SessionState,
    server: &mut W,
    statements: &mut Statements,
    payload: &[u8],
    target: &Target,
) -> Result<(), PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let reply = carried(state, server, statements, payload, target).await?;
    answer(state, Outcome::Committed, Some(reply));
    Ok(())
}

/// [`carry`], the client's reply returned (a part of a query run in parts, `super::parts`).
pub async fn carried<W>(
    state: &SessionState,
    server: &mut W,
    statements: &mut Statements,
    payload: &[u8],
    target: &Target,
) -> Result<Vec<u8>, PumpError>
where
    W: AsyncWrite + Unpin + Send + ?Sized,
{
    let table = &target.table;
    let sent = String::from_utf8_lossy(payload.get(1..).unwrap_or_default());
    // A part of a query keeps its `;` and the blanks around it.
    let text = sent.trim().trim_end_matches(';').trim_end().to_owned();
    let what = format!("{table} (mode {}, rule {})", target.mode, target.rule);
    // A sync table's statement runs on every replica before the client's reply: refused,
    // nothing run, while one is unavailable, as a sync write is.
    let slots = if target.sync { statements.slots.clone() } else { Vec::new() };
    if let Some((name, why)) = slots.iter().map(|s| (&s.name, s.availability())).find(|(_, a)| !a.0).map(|(n, a)| (n, a.1)) {
        let message = format!(
            "capgate refused `{}`: {what} is a sync table, whose DDL runs on every replica before it is acknowledged, but \
             replica \"{name}\" is {why}; nothing was run. Retry once the replica is healthy",
            shown(&text)
        );
        return Ok(packet::err(1, errors::CAPTURE_NOT_READY, &message));
    }
    let mut own = match open(&statements.shared().config.primary.url, table, statements.mariadb()).await {
        Ok(own) => own,
        Err(e) => {
            let message = format!("capgate could not carry `{}` of {what} to the replicas: {e}; nothing was run, retry", shown(&text));
            return Ok(packet::err(1, errors::CAPTURE_NOT_READY, &message));
        }
    };
    let before = match ddl::shape(&mut own, table).await {
        Ok(before) => before,
        Err(e) => {
            close(own, table).await;
            let message = format!("capgate could not carry `{}` of {what} to the replicas: {e}; nothing was run, retry", shown(&text));
            return Ok(packet::err(1, errors::CAPTURE_NOT_READY, &message));
        }
    };
    // The session's settings, read right before its statement, in the same round trip.
    let mut relay = RelayPrimary::new(state, server, statements, super::hold::Commit::Own);
    let replies = relay.own(&[&query(ddl::SETTINGS_SQL), payload]).await.unwrap_or_default();
    let failed = relay.failed.take();
    drop(relay);
    if let Some(e) = failed {
        close(own, table).await;
        return Err(e);
    }
    let settings = replies.first().and_then(|r| settings_of(r, statements.deprecate_eof()));
    let reply = replies.get(1).cloned().unwrap_or_default();
    if error_of(&reply).is_some() {
        // Nothing ran: nothing to carry.
        close(own, table).await;
        return Ok(reply);
    }
    let db = state.lock().schema.clone();
    let policy = statements.shared().router.policy().current();
    let mode = CaptureMode::of(&policy.decide_table(table).mode).unwrap_or(CaptureMode::Async);
    let replicas: Vec<(String, DbUrl)> = slots.iter().map(|s| (s.name.clone(), s.url().clone())).collect();
    let origin = statements.shared().config.site.clone();
    let carried = Carried { ddl: text.clone(), db, settings, before, after: String::new() };
    let recorded = record(&mut own, table, carried, mode, statements.mariadb(), &origin, &replicas).await;
    close(own, table).await;
    super::hold::reconcile(statements).await;
    let missed: Vec<String> = match &recorded {
        Ok(steps) => steps.iter().filter_map(|(name, step)| step.as_ref().err().map(|e| format!("replica \"{name}\": {e}"))).collect(),
        Err(_) => Vec::new(),
    };
    Ok(match recorded {
        Ok(_) if missed.is_empty() => reply,
        Ok(_) => {
            tracing::warn!(%table, "a sync table's DDL ran on the primary but not on every replica: {}", missed.join("; "));
            let message = format!(
                "`{}` ran on the primary, but not on every replica of {what}: {}. capgate ships it to them in order from \
                 the change log; until a replica has it, sync commits that write the table may be refused there",
                shown(&text),
                missed.join("; ")
            );
            packet::err(1, errors::CAPTURE_NOT_READY, &message)
        }
        Err(e) => {
            tracing::error!(%table, "a DDL statement ran on the primary but could not be recorded for the replicas: {e}");
            let message = format!(
                "`{}` ran on the primary, but capgate could not record it for the replicas of {what}: {e}. Run the statement \
                 on each replica by hand; until then the table's changes in its new shape halt there",
                shown(&text)
            );
            packet::err(1, errors::CAPTURE_NOT_READY, &message)
        }
    })
}

/// The session's [`ddl::Settings`] from the reply to [`ddl::SETTINGS_SQL`] (None: not read,
/// the replica's own apply).
fn settings_of(reply: &[u8], deprecate_eof: bool) -> Option<ddl::Settings> {
    let rows = crate::protocol::mysql::rows::text_rows(reply, deprecate_eof).ok()?;
    let row = rows.first()?;
    let text = |i: usize| row.get(i)?.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    Some(ddl::Settings { time_zone: text(0)?, sql_mode: text(1)?, offset: text(2) })
}

/// capgate's own connection to the primary at `url`, holding the table's serializing lock;
/// the table lock of [`record`] is tried once, so a privilege it lacks (LOCK TABLES) is found
/// before the statement runs.
async fn open(url: &DbUrl, table: &TableName, mariadb: bool) -> Result<mysql_async::Conn, String> {
    let deadline = std::time::Duration::from_secs(u64::from(LOCK_WAIT_SECONDS) + 10);
    let opened = async {
        let mut conn = xa::connect(url).await.map_err(|e| e.to_string())?;
        conn.query_drop(format!("SET NAMES utf8mb4, SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")).await.map_err(|e| e.to_string())?;
        let got: Option<Option<i64>> =
            conn.query_first(ddl::take_serial_lock(table, LOCK_WAIT_SECONDS)).await.map_err(|e| e.to_string())?;
        if got.flatten() != Some(1) {
            let _ = conn.disconnect().await;
            return Err(format!("another DDL statement of the table did not finish within {LOCK_WAIT_SECONDS} s"));
        }
        let tried = conn.query_drop(ddl::lock_sql(table, mariadb)).await;
        let _ = conn.query_drop("UNLOCK TABLES").await;
        if let Err(e) = tried {
            let _ = conn.query_drop(ddl::release_serial_lock(table)).await;
            let _ = conn.disconnect().await;
            return Err(format!(
                "capgate's account could not lock the table ({e}); it needs LOCK TABLES and SELECT on the table's database and \
                 on `capgate`"
            ));
        }
        Ok(conn)
    };
    tokio::time::timeout(deadline, opened).await.unwrap_or_else(|_| Err(format!("the primary did not answer within {deadline:?}")))
}

/// Each replica's step of a sync table's statement (its name, and how it went or why not).
type Steps = Vec<(String, Result<Step, String>)>;

/// Lock the table, record `S` (`carried`, its shape after read now), replace the table's
/// capture triggers, run the statement on `replicas` (a sync table's), unlock.
#[allow(clippy::too_many_arguments)]
async fn record(
    conn: &mut mysql_async::Conn,
    table: &TableName,
    mut carried: Carried,
    mode: CaptureMode,
    mariadb: bool,
    origin: &str,
    replicas: &[(String, DbUrl)],
) -> Result<Steps, mysql_async::Error> {
    carried.after = ddl::shape(conn, table).await?;
    // The table's earlier statements a replica may not have settled (read before the lock:
    // only capgate's carried DDL of the table writes them, serialized by the lock this
    // connection holds).
    let earlier = if replicas.is_empty() {
        Vec::new()
    } else {
        let names: Vec<String> = replicas.iter().map(|(n, _)| n.clone()).collect();
        let from = ddl_catchup::floor(conn, &names).await;
        ddl_catchup::listed(conn, Some(table), None, from).await?
    };
    conn.query_drop(ddl::lock_sql(table, mariadb)).await?;
    let done = async {
        let columns = capture::columns(conn, table).await?;
        // A table capgate cannot capture any more (no primary key …) is left to the
        // reconciliation round after, which removes its triggers and says why.
        if let Ok(triggers) = capture::triggers(table, &columns, mode) {
            for t in &triggers {
                conn.query_drop(capture::create_sql(table, t)).await?;
            }
        }
        // `S` is committed only once every replica of a sync table has run the statement:
        // until then the shipper sees a hole, and does not apply it alongside. (`SET
        // autocommit = 0`, not `BEGIN`, which would release the table lock.)
        conn.query_drop("SET autocommit = 0").await?;
        conn.query_drop(ddl::record_sql(table, &carried)).await?;
        let seq = conn.last_insert_id().unwrap_or(0);
        // No write of the table runs on the primary until every replica has the statement.
        let (carried, earlier) = (&carried, &earlier);
        let steps =
            replicas.iter().map(|(name, url)| async move { (name.clone(), replica_step(url, origin, seq, table, carried, earlier).await) });
        let steps = futures_util::future::join_all(steps).await;
        conn.query_drop("COMMIT").await?;
        Ok::<Steps, mysql_async::Error>(steps)
    }
    .await;
    if done.is_err() {
        let _ = conn.query_drop("ROLLBACK").await;
    }
    let unlocked = conn.query_drop("UNLOCK TABLES").await;
    let steps = done?;
    unlocked.map(|()| steps)
}

/// A sync table's statement on one replica, as the shipper would apply it (its step's
/// record left for the shipper, which moves the position past it and finds it done) —
/// after the table's `earlier` statements the replica has not settled (one it missed runs
/// first; if it fails again, this one is not run there either: it follows in order).
async fn replica_step(
    url: &DbUrl,
    origin: &str,
    seq: u64,
    table: &TableName,
    carried: &Carried,
    earlier: &[Pending],
) -> Result<Step, String> {
    let deadline = std::time::Duration::from_secs(u64::from(LOCK_WAIT_SECONDS) * 2);
    let run = async {
        let mut rc = ReplicaConn::connect(url, deadline).await.map_err(|e| e.to_string())?;
        let conn = rc.conn();
        conn.query_drop(format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")).await.map_err(|e| e.to_string())?;
        let caught = ddl_catchup::catch_up(conn, origin, earlier, LOCK_WAIT_SECONDS).await.map_err(|e| e.to_string())?;
        for (k, _, step) in &caught {
            match step {
                Step::Failed(e) | Step::Busy(e) => {
                    return Err(format!(
                        "an earlier statement of the table (change {k}) has not run there yet and could not run now ({e}), and \
                         this one follows it"
                    ))
                }
                Step::Ran => tracing::info!(%table, seq = k, "a carried DDL statement this replica had missed ran before the next one"),
                Step::AlreadyDone => {}
            }
        }
        let step = ddl::run_step(conn, origin, seq, table, carried, LOCK_WAIT_SECONDS).await.map_err(|e| e.to_string())?;
        match step {
            Step::Failed(e) | Step::Busy(e) => Err(e),
            step => Ok(step),
        }
    };
    tokio::time::timeout(deadline, run).await.unwrap_or_else(|_| Err(format!("no answer within {deadline:?}")))
}

/// Release the serializing lock and close capgate's connection.
async fn close(mut conn: mysql_async::Conn, table: &TableName) {
    let _ = conn.query_drop(ddl::release_serial_lock(table)).await;
    let _ = conn.disconnect().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_carried_forms_are_told_apart() {
        assert_eq!(form("ALTER TABLE t ADD COLUMN c INT DEFAULT 7", 1), Form::Carried);
        assert_eq!(form("alter online ignore table t drop index i", 1), Form::Carried);
        assert_eq!(form("ALTER TABLE t RENAME TO u", 2), Form::Rename);
        assert_eq!(form("RENAME TABLE t TO u", 2), Form::Rename);
        assert_eq!(form("CREATE UNIQUE INDEX i ON t (a)", 1), Form::Carried);
        assert_eq!(form("create index i using btree on t(a)", 1), Form::Carried);
        assert_eq!(form("DROP INDEX i ON t", 1), Form::Carried);
        assert_eq!(form("DROP TABLE t", 1), Form::Other);
        assert_eq!(form("ALTER TABLE t ADD PARTITION (PARTITION p9 VALUES LESS THAN MAXVALUE)", 1), Form::Other);
        assert_eq!(form("alter table t remove partitioning", 1), Form::Other);
        assert_eq!(form("ALTER TABLE t PARTITION BY HASH (id) PARTITIONS 4", 1), Form::Other);
        assert_eq!(form("ALTER TABLE t DROP COLUMN `partition`", 1), Form::Carried);
        assert_eq!(form("CREATE TABLE t (a INT, INDEX i (a))", 1), Form::Other);
        assert_eq!(form("CREATE TRIGGER x AFTER INSERT ON t FOR EACH ROW SET @a = 1", 1), Form::Other);
        assert_eq!(form("/* migration 42 */ ALTER TABLE t ADD COLUMN c INT", 1), Form::Carried);
        assert_eq!(form("ALTER /* hint */ TABLE t ADD COLUMN c INT", 1), Form::Carried);
        assert_eq!(form("-- tagged\nCREATE INDEX i ON t (a)", 1), Form::Carried);
        assert_eq!(form("# tagged\nDROP INDEX i ON t", 1), Form::Carried);
        assert_eq!(form("/*!40000 ALTER TABLE t DISABLE KEYS */", 1), Form::Other);
    }
}
