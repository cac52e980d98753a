//! What a site's MySQL / MariaDB servers must offer before capgate can replicate through
//! them, checked against the live servers for `capgate check-config --connect` (the same
//! output as for PostgreSQL, [`super::checks`]): reachability, TLS and authentication with the
//! URL's settings; on the primary the privileges capture and shipping need (the ones `capgate
//! run` refuses to start without, decisions 0015 and 0027) and each replicated table's
//! capture (a primary key, types capgate replicates exactly, InnoDB); on each replica the
//! privileges the apply needs, `read_only` off, XA for sync tables, and every replicated table
//! present with the primary's columns. Nothing is changed on any server.

use std::collections::BTreeMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use super::checks::{dangling_rules, uses_sync, Check, Checks, Outcome};
use crate::classify::TableName;
use crate::config::{Config, DbUrl, Replica};
use crate::policy::Policy;
use crate::store::mysql::capture;
use crate::store::mysql::image::Column;
use crate::store::mysql::primary::{self, Grants};
use crate::store::mysql::xa;
use crate::store::CaptureMode;

/// A replicated table on the primary: its columns and its mode.
type Replicated = BTreeMap<TableName, (Vec<Column>, CaptureMode)>;

/// How long one server's checks may take once connected (a metadata lock, a hung server).
const CHECKS_TIMEOUT: Duration = Duration::from_secs(20);

/// Every check on the MySQL primary and each replica of `config`, in order, one per line.
pub(super) async fn check_all(config: &Config, policy: &Policy) -> Vec<Check> {
    let mut c = Checks { server: "primary".into(), out: Vec::new() };
    let mut tables = Replicated::new();
    if let Some(mut conn) = connect(&mut c, &config.primary.url).await {
        if tokio::time::timeout(CHECKS_TIMEOUT, on_primary(&mut c, &mut conn, policy, &mut tables)).await.is_err() {
            c.add(Outcome::Fail, format!("the checks did not finish within {CHECKS_TIMEOUT:?}"));
        }
        let _ = conn.disconnect().await;
    }
    for replica in &config.replicas {
        let mut r = Checks { server: format!("replica {}", replica.name), out: Vec::new() };
        if let Some(mut conn) = connect(&mut r, &replica.url).await {
            if tokio::time::timeout(CHECKS_TIMEOUT, on_replica(&mut r, &mut conn, policy, &tables)).await.is_err() {
                r.add(Outcome::Fail, format!("the checks did not finish within {CHECKS_TIMEOUT:?}"));
            }
            let _ = conn.disconnect().await;
        }
        c.out.extend(r.out);
    }
    c.out
}

/// A MySQL replica's configuration problems (not its reachability: a partition is the health
/// loop's business), for `/status`: the failed checks of [`on_replica`], its tables compared
/// with the primary's. Empty when either server cannot be reached.
pub async fn replica_problems(primary: &DbUrl, replica: &Replica, policy: &Policy) -> Vec<String> {
    let mut quiet = Checks { server: "primary".into(), out: Vec::new() };
    let mut tables = Replicated::new();
    let Some(mut conn) = connect(&mut quiet, primary).await else { return Vec::new() };
    let listed = tokio::time::timeout(CHECKS_TIMEOUT, on_primary(&mut quiet, &mut conn, policy, &mut tables)).await;
    let _ = conn.disconnect().await;
    let mut c = Checks { server: replica.name.clone(), out: Vec::new() };
    let Some(mut conn) = connect(&mut c, &replica.url).await else { return Vec::new() };
    let checked = tokio::time::timeout(CHECKS_TIMEOUT, on_replica(&mut c, &mut conn, policy, &tables)).await;
    let _ = conn.disconnect().await;
    if listed.is_err() || checked.is_err() {
        return Vec::new();
    }
    c.out.into_iter().filter(|x| x.outcome == Outcome::Fail).map(|x| x.message).collect()
}

/// Connect with the URL's settings and say how: TLS or not, the server's version, the account.
async fn connect(c: &mut Checks, url: &DbUrl) -> Option<mysql_async::Conn> {
    let user = url.user.as_deref().unwrap_or("root");
    let mut conn = match tokio::time::timeout(url.connect_timeout * 2, xa::connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            c.add(Outcome::Fail, format!("cannot connect to {} as {user}: {e}", url.address()));
            return None;
        }
        Err(_) => {
            c.add(Outcome::Fail, format!("no answer from {} within {:?}", url.address(), url.connect_timeout * 2));
            return None;
        }
    };
    let about: Result<Option<(String, String, String)>, _> = conn
        .query_first(
            "SELECT CURRENT_USER(), VERSION(), COALESCE((SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
             WHERE VARIABLE_NAME = 'Ssl_cipher'), '')",
        )
        .await;
    match about {
        Ok(Some((account, version, cipher))) => {
            let tls = if cipher.is_empty() { "no TLS".to_owned() } else { format!("TLS ({cipher})") };
            let server = if version.contains("MariaDB") { "MariaDB" } else { "MySQL" };
            let version = version.split('-').next().unwrap_or(&version);
            c.add(Outcome::Ok, format!("connected to {} as {account}, {server} {version}, {tls}", url.address()));
        }
        Ok(None) | Err(_) => c.add(Outcome::Warn, format!("connected to {}, but cannot read its settings", url.address())),
    }
    Some(conn)
}

async fn on_primary(c: &mut Checks, conn: &mut mysql_async::Conn, policy: &Policy, out: &mut Replicated) {
    let all = match capture::tables(conn).await {
        Ok(t) => t,
        Err(e) => return c.add(Outcome::Warn, format!("cannot list the tables: {e}")),
    };
    for (table, columns) in &all {
        if let Some(mode) = CaptureMode::of(&policy.decide_table(table).mode) {
            out.insert(table.clone(), (columns.clone(), mode));
        }
    }
    let mut schemas: Vec<String> = out.keys().map(|t| t.schema.clone()).collect();
    schemas.dedup();
    match primary::check_privileges(conn, &schemas).await {
        Ok(()) if schemas.is_empty() => c.add(Outcome::Ok, "may keep capgate's change log in the `capgate` database"),
        Ok(()) => {
            c.add(Outcome::Ok, format!("may install capture triggers on {} and keep capgate's change log in `capgate`", schemas.join(", ")))
        }
        Err(e) => c.add(Outcome::Fail, e.to_string()),
    }
    if policy.ships_async() {
        match primary::check_shipping_privileges(conn).await {
            Ok(()) => c.add(Outcome::Ok, "may record shipped positions and list open transactions (PROCESS), as async shipping needs"),
            Err(e) => c.add(Outcome::Fail, e.to_string()),
        }
        let step: Result<Option<u64>, _> = conn.query_first("SELECT @@auto_increment_increment").await;
        if let Ok(Some(step)) = step.map(|s| s.filter(|s| *s > 1)) {
            c.add(
                Outcome::Warn,
                format!(
                    "auto_increment_increment = {step}: capgate's change numbers step by {step}, and each number skipped is \
                     looked up as a hole until it settles (decision 0021); set it to 1 for the session of capgate's account"
                ),
            );
        }
    }
    dangling_rules(c, policy, &all.keys().cloned().collect::<Vec<_>>());
    let engines: Vec<(String, String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COALESCE(ENGINE, '') FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' AND ENGINE <> 'InnoDB'",
        )
        .await
        .unwrap_or_default();
    let mut fine = Vec::new();
    for (table, (columns, mode)) in std::mem::take(out) {
        if let Err(e) = capture::triggers(&table, &columns, mode) {
            c.add(Outcome::Fail, format!("replicated table {table} cannot be captured: {e}; its changes are not replicated"));
        } else if let Some((_, _, engine)) = engines.iter().find(|(s, n, _)| *s == table.schema && *n == table.name) {
            c.add(
                Outcome::Fail,
                format!(
                    "replicated table {table} uses the {engine} engine: its rows do not roll back with the transaction that \
                     captured them; convert it (ALTER TABLE {table} ENGINE = InnoDB)"
                ),
            );
        } else {
            fine.push(table.to_string());
            out.insert(table, (columns, mode));
        }
    }
    // (`out` keeps the tables fit to replicate: the replicas are checked for those, by the
    // columns' full types.)
    if let Ok(mut full) = column_types(conn).await {
        for (table, (columns, _)) in out.iter_mut() {
            if let Some(typed) = full.remove(table) {
                *columns = typed;
            }
        }
    }
    let list = if fine.is_empty() { "none".to_owned() } else { fine.join(", ") };
    c.add(Outcome::Ok, format!("{} table(s) the policy replicates: {list}", fine.len()));
}

/// What a replica's account needs: capgate's database (its positions, functions) and
/// changing the replicated tables.
const REPLICA_CAPGATE: [&str; 8] = ["CREATE", "CREATE ROUTINE", "ALTER ROUTINE", "EXECUTE", "INSERT", "UPDATE", "DELETE", "SELECT"];
const REPLICA_TABLES: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

async fn on_replica(c: &mut Checks, conn: &mut mysql_async::Conn, policy: &Policy, tables: &Replicated) {
    // Whether the account may write while the server is read-only (None: unknown).
    let mut bypass = None;
    match Grants::read(conn).await {
        Ok(grants) => {
            bypass = Some(grants.has_global("READ_ONLY ADMIN"));
            let mut lacking: Vec<String> = REPLICA_CAPGATE
                .iter()
                .filter(|p| !grants.has(p, "capgate"))
                .map(|p| format!("`GRANT {p} ON `capgate`.* TO {}`", grants.grantee))
                .collect();
            // On the replicated tables the grant may be per table: what is missing is named per
            // database (or per table when the database has the others).
            for t in tables.keys() {
                for p in REPLICA_TABLES.iter().filter(|p| !grants.has_on_table(p, &t.schema, &t.name)) {
                    let grant = format!("`GRANT {p} ON `{}`.* TO {}`", t.schema, grants.grantee);
                    if !lacking.contains(&grant) {
                        lacking.push(grant);
                    }
                }
            }
            let binlog: Result<Option<(i64, i64)>, _> = conn.query_first("SELECT @@log_bin, @@log_bin_trust_function_creators").await;
            if matches!(binlog, Ok(Some((1, 0)))) && !grants.has_global("SUPER") {
                c.add(
                    Outcome::Fail,
                    format!(
                        "binary logging is on (log_bin = ON) and {} has no SUPER privilege, so MariaDB refuses to let it create \
                         capgate's function: grant SUPER, or set log_bin_trust_function_creators = ON here",
                        grants.grantee
                    ),
                );
            }
            if lacking.is_empty() {
                c.add(Outcome::Ok, "may keep capgate's positions and functions in `capgate` and change the replicated tables");
            } else {
                c.add(Outcome::Fail, format!("the URL's account lacks privileges capgate's apply needs: {}", lacking.join(", ")));
            }
        }
        Err(e) => c.add(Outcome::Warn, format!("cannot read the account's privileges: {e}")),
    }
    let read_only: Result<Option<i64>, _> = conn.query_first("SELECT @@read_only").await;
    if let Ok(Some(1)) = read_only {
        match bypass {
            Some(true) => c.add(
                Outcome::Warn,
                "read_only = ON, and capgate's account may write anyway (READ_ONLY ADMIN): a replica must be an ordinary \
                 writable server of the other site — if this one is a binlog replica, capgate's writes make it diverge from \
                 its source",
            ),
            _ => c.add(
                Outcome::Fail,
                "read_only = ON: capgate's apply is refused here (its account has no READ_ONLY ADMIN); the replica must be an \
                 ordinary writable server of the other site, not a binlog replica — SET GLOBAL read_only = OFF",
            ),
        }
    }
    if uses_sync(policy) {
        match conn.query::<mysql_async::Row, _>("XA RECOVER").await {
            Ok(rows) => {
                c.add(Outcome::Ok, format!("XA RECOVER answers ({} branch(es) prepared now): sync tables can commit here", rows.len()))
            }
            Err(e) => c.add(Outcome::Fail, format!("XA RECOVER fails ({e}): capgate cannot recover its sync branches here")),
        }
    }
    let theirs = match column_types(conn).await {
        Ok(t) => t,
        Err(e) => return c.add(Outcome::Warn, format!("cannot list the tables: {e}")),
    };
    let mut fine = 0;
    for (table, (columns, _)) in tables {
        match theirs.get(table) {
            None => c.add(
                Outcome::Fail,
                format!(
                    "replicated table {table} is missing: create it here with the same columns (e.g. mariadb-dump --no-data) \
                     before replicating it"
                ),
            ),
            Some(here) => match differs(columns, here) {
                Some(why) => c.add(Outcome::Fail, format!("replicated table {table} differs from the primary's: {why}")),
                None => fine += 1,
            },
        }
    }
    if !tables.is_empty() {
        c.add(Outcome::Ok, format!("{fine} of {} replicated table(s) present with the primary's columns", tables.len()));
    }
}

/// Every column of every base table outside the system databases, in order, with its full
/// type as the server prints it (`varchar(255)`, `int(10) unsigned`, `decimal(12,2)`,
/// `enum('a','b')`): a replica's `varchar(10)` for the primary's `varchar(255)` fails the
/// apply of a longer value, so the base type alone would not do.
async fn column_types(conn: &mut mysql_async::Conn) -> Result<BTreeMap<TableName, Vec<Column>>, mysql_async::Error> {
    let rows: Vec<(String, String, String, String, bool)> = conn
        .query(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.COLUMN_TYPE, c.COLUMN_KEY = 'PRI' \
             FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
             ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
             WHERE t.TABLE_TYPE = 'BASE TABLE' \
             AND c.TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
             ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION",
        )
        .await?;
    let mut out: BTreeMap<TableName, Vec<Column>> = BTreeMap::new();
    for (schema, table, name, data_type, key) in rows {
        out.entry(TableName::new(schema, table)).or_default().push(Column { name, data_type, key, generated: false });
    }
    Ok(out)
}

/// How a replica's columns differ from the primary's (names, order, types, primary key), or
/// None when they match.
fn differs(primary: &[Column], replica: &[Column]) -> Option<String> {
    for (p, r) in primary.iter().zip(replica) {
        if p.name != r.name {
            return Some(format!("column `{}` here where the primary has `{}`", r.name, p.name));
        }
        if p.data_type != r.data_type || p.key != r.key {
            return Some(format!("column `{}` is {} here, {} on the primary", p.name, describe(r), describe(p)));
        }
    }
    match (primary.get(replica.len()), replica.get(primary.len())) {
        (Some(p), _) => Some(format!("column `{}` is missing here", p.name)),
        (_, Some(r)) => Some(format!("column `{}` is not on the primary", r.name)),
        _ => None,
    }
}

fn describe(c: &Column) -> String {
    if c.key {
        format!("{} (primary key)", c.data_type)
    } else {
        c.data_type.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, data_type: &str, key: bool) -> Column {
        Column { name: name.into(), data_type: data_type.into(), key, generated: false }
    }

    #[test]
    fn a_replica_table_differs_by_a_column_its_type_or_its_key() {
        let primary = [col("id", "int", true), col("v", "varchar", false)];
        assert_eq!(differs(&primary, &primary), None);
        assert_eq!(differs(&primary, &primary[..1]).as_deref(), Some("column `v` is missing here"));
        let wider = [col("id", "int", true), col("v", "varchar", false), col("w", "int", false)];
        assert_eq!(differs(&primary, &wider).as_deref(), Some("column `w` is not on the primary"));
        let retyped = [col("id", "bigint", true), col("v", "varchar", false)];
        assert_eq!(
            differs(&primary, &retyped).as_deref(),
            Some("column `id` is bigint (primary key) here, int (primary key) on the primary")
        );
        let unkeyed = [col("id", "int", false), col("v", "varchar", false)];
        assert_eq!(differs(&primary, &unkeyed).as_deref(), Some("column `id` is int here, int (primary key) on the primary"));
        let renamed = [col("id", "int", true), col("value", "varchar", false)];
        assert_eq!(differs(&primary, &renamed).as_deref(), Some("column `value` here where the primary has `v`"));
    }
}
