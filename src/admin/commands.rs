//! The admin SQL commands, answered by capgate itself on the application port, like
//! PgBouncer's console and ProxySQL's admin tables: an operator queries capgate with the
//! client already open (psql, `mariadb`). Never forwarded to the primary.
//!
//! ```text
//! SHOW CAPGATE STATUS                 the site, its primary, the policy version, sessions
//! SHOW CAPGATE REPLICAS               each replica's state, round trip, lag, shipping
//! SHOW CAPGATE LAG                    lag and pending rows per replica and table
//! SHOW CAPGATE POLICY                 the rules in force, first match first
//! SHOW CAPGATE CONFLICTS [LIMIT n]    the newest conflicts of every replica
//! CAPGATE RELOAD                      re-read the policy file now
//! CAPGATE VERIFY <table>              compare one table on the primary and every replica
//! SHOW CAPGATE HELP                   this list
//! ```
//!
//! Protocol-neutral: [`parse`] reads the text, [`run`] checks the user against
//! `admin_users` and answers with a [`ResultTable`]; each front end encodes it (and an
//! [`AdminError`] as its permission or syntax error). The one thing that differs between the
//! ports is how `CAPGATE VERIFY` reads a table name ([`Names`]).

use super::table::{ColumnType as T, ResultTable, Value};
use super::{conflicts, status, AdminError, AdminState};
use crate::policy::{Mode, OnConflict, OnPartition, Policy, UnknownAction};
use crate::verify::{self, Limits, Selection, TableName, TableResult};

/// Most conflicts `SHOW CAPGATE CONFLICTS` lists without a LIMIT.
const DEFAULT_CONFLICTS: i64 = 20;

/// The commands, for the help text and error messages.
pub const HELP: &[(&str, &str)] = &[
    ("SHOW CAPGATE STATUS", "the site, its primary, the policy version and the client sessions"),
    ("SHOW CAPGATE REPLICAS", "each replica's state, round trip, lag, pending rows, drain rate and shipping"),
    ("SHOW CAPGATE LAG", "lag and pending rows per replica and table"),
    ("SHOW CAPGATE POLICY", "the policy's rules, first match first, and its default"),
    ("SHOW CAPGATE CONFLICTS [LIMIT n]", "the newest conflicts recorded on each replica"),
    ("CAPGATE RELOAD", "re-read the policy file now (a bad file keeps the current policy)"),
    ("CAPGATE VERIFY <table>", "compare one table on the primary and on every replica"),
    ("SHOW CAPGATE HELP", "this list"),
];

/// A parsed admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Replicas,
    Lag,
    Policy,
    Conflicts { limit: i64 },
    Reload,
    Verify(TableName),
    Help,
}

/// How `CAPGATE VERIFY` reads its table name: as the port's database does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names<'a> {
    /// PostgreSQL: unquoted names fold to lower case, `public` when unqualified.
    Postgres,
    /// MySQL / MariaDB: backticks or double quotes, no case folding, the session's current
    /// database (`USE`) when unqualified.
    MySql { database: Option<&'a str> },
}

/// Whether `sql` is meant for capgate (`SHOW CAPGATE …` or `CAPGATE …`).
pub fn is_admin_command(sql: &str) -> bool {
    is_admin_text(sql.as_bytes())
}

/// The same on raw query bytes, as a front end has them: done on every simple query, so it
/// looks at the first two words only, allocates nothing and never validates the whole text.
pub fn is_admin_text(sql: &[u8]) -> bool {
    let mut words = sql.split(|b| b.is_ascii_whitespace() || *b == 0).filter(|w| !w.is_empty());
    let is = |w: &[u8], word: &str| w.eq_ignore_ascii_case(word.as_bytes());
    let Some(first) = words.next() else { return false };
    if !matches!(first.first(), Some(b's' | b'S' | b'c' | b'C')) {
        return false;
    }
    if is(first, "capgate") || is(first, "capgate;") {
        return true;
    }
    is(first, "show") && words.next().is_some_and(|w| is(w.strip_suffix(b";").unwrap_or(w), "capgate"))
}

fn usage() -> String {
    let list: Vec<&str> = HELP.iter().map(|(c, _)| *c).collect();
    format!("capgate admin commands: {}", list.join("; "))
}

/// Parse an admin command (one for which [`is_admin_command`] holds), names as PostgreSQL
/// reads them.
pub fn parse(sql: &str) -> Result<Command, AdminError> {
    parse_with(sql, Names::Postgres)
}

/// [`parse`], reading a table name as `names` says.
pub fn parse_with(sql: &str, names: Names<'_>) -> Result<Command, AdminError> {
    let text = sql.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let bad = || AdminError::Syntax(format!("unknown capgate command `{text}`; {}", usage()));
    match upper.as_slice() {
        ["SHOW", "CAPGATE", "STATUS"] => Ok(Command::Status),
        ["SHOW", "CAPGATE", "REPLICAS"] => Ok(Command::Replicas),
        ["SHOW", "CAPGATE", "LAG"] => Ok(Command::Lag),
        ["SHOW", "CAPGATE", "POLICY"] => Ok(Command::Policy),
        ["SHOW", "CAPGATE", "HELP"] | ["CAPGATE", "HELP"] => Ok(Command::Help),
        ["SHOW", "CAPGATE", "CONFLICTS"] => Ok(Command::Conflicts { limit: DEFAULT_CONFLICTS }),
        ["SHOW", "CAPGATE", "CONFLICTS", "LIMIT", n] => match n.parse::<i64>() {
            Ok(limit) if (1..=10_000).contains(&limit) => Ok(Command::Conflicts { limit }),
            _ => Err(AdminError::Syntax(format!("SHOW CAPGATE CONFLICTS LIMIT takes a number from 1 to 10000, found `{n}`"))),
        },
        ["CAPGATE", "RELOAD"] => Ok(Command::Reload),
        ["CAPGATE", "VERIFY"] => {
            let example = if names == Names::Postgres { "public.accounts" } else { "shop.accounts" };
            Err(AdminError::Syntax(format!("CAPGATE VERIFY needs a table: CAPGATE VERIFY {example}")))
        }
        ["CAPGATE", "VERIFY", ..] => {
            // The table name keeps its case and quotes: take it from the original text.
            let rest = text[text.to_ascii_uppercase().find("VERIFY").map_or(0, |i| i + "VERIFY".len())..].trim();
            table_name(rest, names).map(Command::Verify).map_err(|e| AdminError::Syntax(format!("CAPGATE VERIFY: {e}")))
        }
        _ => Err(bad()),
    }
}

/// A table name as `names` reads it.
fn table_name(text: &str, names: Names<'_>) -> Result<TableName, String> {
    match names {
        Names::Postgres => verify::parse_table_name(text),
        Names::MySql { database } => verify::mysql::sql::parse_table_name_in(text, database),
    }
}

/// Run `sql` for `user`: refused unless the user is in `admin_users`. Names as PostgreSQL
/// reads them.
pub async fn run(state: &AdminState, user: &str, sql: &str) -> Result<ResultTable, AdminError> {
    run_with(state, user, sql, Names::Postgres).await
}

/// [`run`], reading a table name as `names` says.
pub async fn run_with(state: &AdminState, user: &str, sql: &str, names: Names<'_>) -> Result<ResultTable, AdminError> {
    if !state.config.admin_users.iter().any(|u| u == user) {
        return Err(AdminError::Permission(format!(
            "user \"{user}\" may not run capgate admin commands: only the users in admin_users of {} may",
            state.config.file.display()
        )));
    }
    match parse_with(sql, names)? {
        Command::Status => Ok(status_table(state)),
        Command::Replicas => Ok(replicas(state)),
        Command::Lag => Ok(lag(state)),
        Command::Policy => Ok(policy(&state.policy.current(), state)),
        Command::Conflicts { limit } => conflicts_table(state, limit).await,
        Command::Reload => reload(state),
        Command::Verify(table) => verify_table(state, table).await,
        Command::Help => {
            let mut t = ResultTable::new("SHOW", &[("command", T::Text), ("shows", T::Text)]);
            for (c, what) in HELP {
                t.push(vec![(*c).into(), (*what).into()]);
            }
            Ok(t)
        }
    }
}

fn status_table(state: &AdminState) -> ResultTable {
    let s = status::status(state);
    let mut t = ResultTable::new(
        "SHOW",
        &[
            ("site", T::Text),
            ("primary", T::Text),
            ("primary_state", T::Text),
            ("policy_version", T::Int),
            ("client_connections", T::Int),
            ("replicas", T::Int),
            ("replicas_available", T::Int),
            ("unknown_relayed", T::Int),
            ("unknown_refused", T::Int),
        ],
    );
    let available = s.replicas.iter().filter(|r| matches!(r.state, "healthy" | "suspect")).count() as u64;
    t.push(vec![
        s.site.into(),
        s.primary.address.into(),
        s.primary.state.into(),
        s.policy_version.into(),
        (s.client_connections as u64).into(),
        (s.replicas.len() as u64).into(),
        available.into(),
        s.unknown_statements.relayed.into(),
        s.unknown_statements.refused.into(),
    ]);
    t
}

fn replicas(state: &AdminState) -> ResultTable {
    let mut t = ResultTable::new(
        "SHOW",
        &[
            ("name", T::Text),
            ("state", T::Text),
            ("state_for_s", T::Float),
            ("rtt_ms", T::Float),
            ("lag_s", T::Float),
            ("pending_rows", T::Int),
            ("drain_rate", T::Float),
            ("applied_seq", T::Int),
            ("conflicts", T::Int),
            ("shipping", T::Text),
            ("problems", T::Text),
            ("last_error", T::Text),
        ],
    );
    for r in status::status(state).replicas {
        t.push(vec![
            r.name.into(),
            r.state.into(),
            r.state_for_seconds.into(),
            r.rtt_ms.into(),
            r.lag_seconds.into(),
            r.pending_rows.into(),
            r.drain_rate.into(),
            r.applied_seq.into(),
            r.conflicts.into(),
            r.shipping.into(),
            (!r.problems.is_empty()).then(|| r.problems.join("; ")).into(),
            r.last_error.into(),
        ]);
    }
    t
}

fn lag(state: &AdminState) -> ResultTable {
    let mut t = ResultTable::new(
        "SHOW",
        &[("replica", T::Text), ("table", T::Text), ("mode", T::Text), ("lag_s", T::Float), ("pending_rows", T::Int)],
    );
    for r in status::status(state).replicas {
        for table in r.tables {
            t.push(vec![r.name.clone().into(), table.table.into(), table.mode.into(), table.lag_seconds.into(), table.pending_rows.into()]);
        }
    }
    t
}

/// A mode's options as `key=value` words, as they would be written in the policy file.
pub fn mode_options(mode: &Mode) -> String {
    let partition = |p: &OnPartition| match p {
        OnPartition::Fail => "on_partition=fail".to_owned(),
        OnPartition::Block { timeout } => format!("on_partition=block partition_timeout={timeout:?}"),
    };
    let conflict = |c: &OnConflict| {
        let name = match c {
            OnConflict::Skip => "skip",
            OnConflict::Halt => "halt",
            OnConflict::Overwrite => "overwrite",
            OnConflict::Latest => "latest",
        };
        format!("on_conflict={name}")
    };
    match mode {
        Mode::Local => String::new(),
        Mode::Async { on_conflict } => conflict(on_conflict),
        Mode::Sync { on_partition, quorum: None } => partition(on_partition),
        Mode::Sync { on_partition, quorum: Some(k) } => format!("{} quorum={k}", partition(on_partition)),
        Mode::Bounded { max_lag, on_partition, on_conflict } => {
            format!("max_lag={max_lag:?} {} {}", partition(on_partition), conflict(on_conflict))
        }
    }
}

fn policy(p: &Policy, state: &AdminState) -> ResultTable {
    let mut t = ResultTable::new(
        "SHOW",
        &[("position", T::Int), ("match", T::Text), ("mode", T::Text), ("options", T::Text), ("line", T::Int), ("version", T::Int)],
    );
    let file = state.config.policy.as_ref().map(|f| f.display().to_string());
    for (i, rule) in p.rules.iter().enumerate() {
        let line = if rule.line == 0 { Value::Null } else { Value::Int(rule.line as i64) };
        t.push(vec![
            Value::Int(i as i64 + 1),
            rule.pattern_text.clone().into(),
            rule.mode.name().into(),
            mode_options(&rule.mode).into(),
            line,
            p.version.into(),
        ]);
    }
    let unknown = if p.unknown == UnknownAction::Relay { "relay" } else { "refuse" };
    let default_note = match &file {
        Some(f) => format!("{} (unknown statements: {unknown}; file {f})", mode_options(&p.default)),
        None => format!("no policy file: every table is local (unknown statements: {unknown})"),
    };
    t.push(vec![
        Value::Null,
        "(default)".into(),
        p.default.name().into(),
        default_note.trim().to_owned().into(),
        Value::Null,
        p.version.into(),
    ]);
    t
}

async fn conflicts_table(state: &AdminState, limit: i64) -> Result<ResultTable, AdminError> {
    if state.config.primary.url.scheme == crate::config::Scheme::MySql && state.config.conflict_log.is_none() {
        return Err(AdminError::Failed(conflicts::no_log(&state.config)));
    }
    let listing = conflicts::list(&state.config, None, limit, false).await;
    let mut t = ResultTable::new(
        "SHOW",
        &[
            ("replica", T::Text),
            ("id", T::Int),
            ("at", T::Text),
            ("origin", T::Text),
            ("tables", T::Text),
            ("kind", T::Text),
            ("error", T::Text),
            ("resolution", T::Text),
            ("resolved_at", T::Text),
            ("details", T::Text),
        ],
    );
    for c in &listing.conflicts {
        let details: Vec<String> = c.details().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.push(vec![
            c.replica.clone().into(),
            Value::Int(c.id),
            c.at().into(),
            c.origin().into(),
            c.tables().into(),
            c.kind().into(),
            c.error().into(),
            c.resolution().into(),
            c.resolved_at().into(),
            details.join("; ").into(),
        ]);
    }
    if listing.conflicts.is_empty() && !listing.errors.is_empty() {
        let why: Vec<String> = listing.errors.iter().map(|(r, e)| format!("replica {r}: {e}")).collect();
        return Err(AdminError::Unreachable(format!("cannot read the conflicts: {}", why.join("; "))));
    }
    for (replica, why) in &listing.errors {
        let mut row = vec![Value::Null; t.columns.len()];
        row[0] = replica.clone().into();
        row[6] = format!("could not be read: {why}").into();
        t.push(row);
    }
    Ok(t)
}

fn reload(state: &AdminState) -> Result<ResultTable, AdminError> {
    let Some(file) = &state.config.policy else {
        return Err(AdminError::Failed(format!("{} names no policy file: nothing to reload", state.config.file.display())));
    };
    match state.policy.reload() {
        Ok(version) => {
            tracing::info!(file = %file.display(), version, "policy reloaded (CAPGATE RELOAD)");
            let mut t = ResultTable::new("RELOAD", &[("policy", T::Text), ("version", T::Int), ("result", T::Text)]);
            t.push(vec![file.display().to_string().into(), version.into(), "reloaded".into()]);
            Ok(t)
        }
        Err(e) => Err(AdminError::Failed(format!("the policy was not reloaded; the current version stays in force:\n{e}"))),
    }
}

async fn verify_table(state: &AdminState, table: TableName) -> Result<ResultTable, AdminError> {
    let report = verify::run(&state.config, &Selection::Named(vec![table]), Limits::default())
        .await
        .map_err(|e| AdminError::Failed(format!("verify could not run: {e}")))?;
    let mut t = ResultTable::new(
        "VERIFY",
        &[
            ("replica", T::Text),
            ("table", T::Text),
            ("result", T::Text),
            ("rows_primary", T::Int),
            ("rows_replica", T::Int),
            ("rows_differing", T::Int),
            ("detail", T::Text),
        ],
    );
    for r in &report.replicas {
        for tr in &r.tables {
            let (result, primary, replica, differing, detail): (&str, Value, Value, Value, Value) = match &tr.result {
                TableResult::Equal { rows, .. } => {
                    ("equal", (*rows).into(), (*rows).into(), 0u64.into(), r.consistent_point.clone().into())
                }
                TableResult::Diverged { rows_primary, rows_replica, rows_differing, differences, .. } => {
                    let keys: Vec<String> = differences.iter().take(10).map(|d| format!("({})", d.key.join(", "))).collect();
                    let detail = format!("first differing keys: {}", keys.join(" "));
                    ("diverged", (*rows_primary).into(), (*rows_replica).into(), (*rows_differing).into(), detail.into())
                }
                TableResult::NoPrimaryKey { equal, rows_primary, rows_replica } => {
                    let result = if *equal { "equal" } else { "diverged" };
                    let note = "no primary key: whole-table checksum only";
                    (result, (*rows_primary).into(), (*rows_replica).into(), Value::Null, note.into())
                }
                TableResult::MissingOnReplica => {
                    ("diverged", Value::Null, Value::Null, Value::Null, "the table is missing on the replica".into())
                }
                TableResult::Error { message } => ("error", Value::Null, Value::Null, Value::Null, message.clone().into()),
            };
            t.push(vec![r.replica.clone().into(), tr.table.clone().into(), result.into(), primary, replica, differing, detail]);
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_commands_are_recognised_by_their_first_words_only() {
        for yes in ["SHOW CAPGATE STATUS", "  show capgate replicas;", "capgate reload", "Capgate\tverify t", "show capgate;"] {
            assert!(is_admin_command(yes), "{yes}");
        }
        for no in ["SHOW search_path", "SELECT 'capgate'", "show capgates", "", "capgateX", "create table capgate (x int)", "showcapgate"] {
            assert!(!is_admin_command(no), "{no}");
        }
    }

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse("show capgate status;").unwrap(), Command::Status);
        assert_eq!(parse("SHOW CAPGATE CONFLICTS").unwrap(), Command::Conflicts { limit: DEFAULT_CONFLICTS });
        assert_eq!(parse("SHOW CAPGATE CONFLICTS LIMIT 5").unwrap(), Command::Conflicts { limit: 5 });
        assert_eq!(parse("capgate verify \"Sales\".orders").unwrap(), Command::Verify(TableName::new("Sales", "orders")));
        assert_eq!(parse("CAPGATE VERIFY accounts").unwrap(), Command::Verify(TableName::new("public", "accounts")));
        let err = parse("SHOW CAPGATE CONFLICTS LIMIT lots").unwrap_err().to_string();
        assert!(err.contains("LIMIT takes a number"), "{err}");
        let err = parse("SHOW CAPGATE EVERYTHING").unwrap_err().to_string();
        assert!(err.contains("unknown capgate command") && err.contains("SHOW CAPGATE REPLICAS"), "{err}");
        assert!(parse("CAPGATE VERIFY").unwrap_err().to_string().contains("needs a table"));
    }

    #[test]
    fn mysql_names_keep_their_case_and_take_the_current_database() {
        let shop = Names::MySql { database: Some("Shop") };
        assert_eq!(parse_with("CAPGATE VERIFY Orders", shop).unwrap(), Command::Verify(TableName::new("Shop", "Orders")));
        assert_eq!(parse_with("capgate verify `My db`.t;", shop).unwrap(), Command::Verify(TableName::new("My db", "t")));
        let none = Names::MySql { database: None };
        let err = parse_with("CAPGATE VERIFY orders", none).unwrap_err().to_string();
        assert!(err.contains("database.table"), "{err}");
        assert!(parse_with("CAPGATE VERIFY", shop).unwrap_err().to_string().contains("shop.accounts"));
    }

    #[test]
    fn mode_options_read_like_the_policy_file() {
        assert_eq!(mode_options(&Mode::Sync { on_partition: OnPartition::Fail, quorum: None }), "on_partition=fail");
        let bounded =
            Mode::Bounded { max_lag: std::time::Duration::from_secs(5), on_partition: OnPartition::Fail, on_conflict: OnConflict::Skip };
        assert_eq!(mode_options(&bounded), "max_lag=5s on_partition=fail on_conflict=skip");
    }
}
