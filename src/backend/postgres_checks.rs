//! What a site's PostgreSQL servers must offer before capgate can replicate through them,
//! checked against the live servers: reachability, TLS and authentication with the URL's
//! settings, the privileges capgate's own schema needs, `max_prepared_transactions` where
//! sync tables commit by two-phase commit, and every replicated table present (with a
//! primary key, and writable) on each replica.
//!
//! Used by `capgate check-config --connect` (one line per check) and by the admin views,
//! which show a replica's configuration problems next to its health: a replica that cannot
//! PREPARE is misconfigured, not partitioned, and retrying will not help.
//! docs/before-you-replicate.md explains each check and its remedy.

use tokio_postgres::Client;

use super::checks::{dangling_rules, uses_sync, Check, Checks, Outcome};
use super::postgres::Upstream;
use crate::classify::TableName;
use crate::config::{Config, DbUrl, Replica, SslMode};
use crate::policy::{Mode, Policy};
use crate::verify::sql::{quoted, USER_TABLES};

/// Connect with the URL's settings and say how: TLS or not, the server's version, the user.
async fn connect(c: &mut Checks, url: &DbUrl) -> Option<Client> {
    let upstream = match Upstream::new(url.clone()) {
        Ok(u) => u,
        Err(e) => {
            c.add(Outcome::Fail, format!("the URL's TLS settings cannot be loaded: {e}"));
            return None;
        }
    };
    let client = match tokio::time::timeout(url.connect_timeout * 2, upstream.client("capgate check-config")).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            c.add(Outcome::Fail, format!("cannot connect to {} as {}: {e}", url.address(), url.user.as_deref().unwrap_or("postgres")));
            return None;
        }
        Err(_) => {
            c.add(Outcome::Fail, format!("no answer from {} within {:?}", url.address(), url.connect_timeout * 2));
            return None;
        }
    };
    let about = client
        .query_one(
            "SELECT current_user::text, current_setting('server_version'), \
             coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await;
    match about {
        Ok(row) => {
            let (user, version, ssl): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
            let mode = match url.sslmode {
                SslMode::Disable => "disable",
                SslMode::Prefer => "prefer",
                SslMode::Require => "require",
                SslMode::VerifyCa => "verify-ca",
                SslMode::VerifyFull => "verify-full",
            };
            let tls = if ssl { format!("TLS (sslmode={mode})") } else { "no TLS".to_owned() };
            c.add(Outcome::Ok, format!("connected to {} as {user}, PostgreSQL {version}, {tls}", url.address()));
        }
        Err(e) => c.add(Outcome::Warn, format!("connected to {}, but cannot read its settings: {e}", url.address())),
    }
    Some(client)
}

/// Can capgate keep its own schema (`capgate`: outbox, decisions, watermarks, conflicts)?
async fn schema_privilege(c: &mut Checks, client: &Client) {
    let q = "SELECT CASE WHEN to_regnamespace('capgate') IS NOT NULL \
                  THEN has_schema_privilege('capgate', 'CREATE, USAGE') \
                  ELSE has_database_privilege(current_database(), 'CREATE') END, \
             to_regnamespace('capgate') IS NOT NULL";
    match client.query_one(q, &[]).await {
        Ok(row) if row.get::<_, bool>(0) => {
            let exists = if row.get::<_, bool>(1) { "the capgate schema exists and is usable" } else { "may create the capgate schema" };
            c.add(Outcome::Ok, exists);
        }
        Ok(_) => c.add(
            Outcome::Fail,
            "the URL's user may not create (or use) the capgate schema: GRANT CREATE ON DATABASE … TO that user, \
             or create the schema capgate owned by it",
        ),
        Err(e) => c.add(Outcome::Warn, format!("cannot check the schema privilege: {e}")),
    }
}

async fn prepared_transactions(c: &mut Checks, client: &Client, policy: &Policy) {
    if !uses_sync(policy) {
        return;
    }
    match client.query_one("SELECT current_setting('max_prepared_transactions')::int", &[]).await {
        Ok(row) if row.get::<_, i32>(0) > 0 => c.add(Outcome::Ok, format!("max_prepared_transactions = {}", row.get::<_, i32>(0))),
        Ok(_) => c.add(Outcome::Fail, PREPARE_DISABLED),
        Err(e) => c.add(Outcome::Warn, format!("cannot read max_prepared_transactions: {e}")),
    }
}

/// What a replica that cannot PREPARE is told.
const PREPARE_DISABLED: &str = "max_prepared_transactions = 0: sync tables cannot commit here (PREPARE TRANSACTION is disabled); \
     set max_prepared_transactions (e.g. to max_connections) in the replica's postgresql.conf and restart it";

/// The tables of the primary the policy replicates.
async fn replicated_tables(client: &Client, policy: &Policy) -> Result<Vec<TableName>, tokio_postgres::Error> {
    let rows = client.query(USER_TABLES, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|t| policy.decide_table(t).mode != Mode::Local)
        .collect())
}

/// Each replicated table on the replica: present, writable by the URL's user, with a primary
/// key on the primary (verify and conflict detection need one).
async fn tables_on_replica(c: &mut Checks, replica: &Client, tables: &[TableName], keyless: &[TableName]) {
    let mut fine = 0;
    for t in tables {
        let q = "SELECT to_regclass($1) IS NOT NULL, \
                 CASE WHEN to_regclass($1) IS NULL THEN false ELSE has_table_privilege(to_regclass($1), 'INSERT, UPDATE, DELETE') END";
        match replica.query_one(q, &[&quoted(t)]).await {
            Ok(row) if !row.get::<_, bool>(0) => c.add(
                Outcome::Fail,
                format!("replicated table {t} is missing: create it here with the same columns and seed it before replicating it"),
            ),
            Ok(row) if !row.get::<_, bool>(1) => {
                c.add(Outcome::Fail, format!("the URL's user may not INSERT, UPDATE and DELETE {t}: GRANT them to it"))
            }
            Ok(_) => fine += 1,
            Err(e) => c.add(Outcome::Warn, format!("cannot check {t}: {e}")),
        }
    }
    if fine > 0 {
        c.add(Outcome::Ok, format!("{fine} of {} replicated table(s) present and writable", tables.len()));
    }
    for t in keyless {
        c.add(Outcome::Warn, format!("{t} has no primary key: verify compares it only as a whole and conflicts cannot name rows"));
    }
}

/// The replicated tables that have no primary key on the primary.
async fn keyless(client: &Client, tables: &[TableName]) -> Vec<TableName> {
    let mut out = Vec::new();
    for t in tables {
        let q = "SELECT NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = to_regclass($1) AND indisprimary)";
        if let Ok(row) = client.query_one(q, &[&quoted(t)]).await {
            if row.get::<_, bool>(0) {
                out.push(t.clone());
            }
        }
    }
    out
}

/// The sites that take writes, sorted: this one and every replica marked `takes_writes`.
/// A site's position in this list is its offset in per-site sequences.
pub fn writing_sites(config: &Config) -> Vec<String> {
    let mut sites: Vec<String> =
        std::iter::once(config.site.clone()).chain(config.replicas.iter().filter(|r| r.takes_writes).map(|r| r.name.clone())).collect();
    sites.sort();
    sites.dedup();
    sites
}

/// The statement that gives this site (position `index`, 1-based, of `sites` writing sites)
/// its own values of sequence `seq`, past `above`: every site's values step by `sites`, this
/// one's are `index` modulo it.
pub fn per_site_sequence(seq: &str, sites: usize, index: usize, above: i64) -> String {
    let n = sites as i64;
    let start = (above.max(0) / n + 1) * n + index as i64 % n;
    format!("ALTER SEQUENCE {seq} INCREMENT BY {n} RESTART WITH {start}")
}

/// Keys from sequences on tables written at several sites: two sites inserting take the same
/// values from their own copies of the sequence, and the rows collide (`insert_exists`)
/// unless each site has its own values. Only when several sites take writes (`takes_writes`).
async fn sequence_keys(c: &mut Checks, client: &Client, tables: &[TableName], sites: &[String], site: &str) {
    for warning in sequence_key_warnings(client, tables, sites, site).await {
        c.add(Outcome::Warn, warning.message);
    }
}

/// A column of a table written at several sites whose values come from a sequence every
/// site steps through alike: `check-config` prints `message`, `capgate run` logs it once per
/// table and column at start-up (and when the table starts being captured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceKeyWarning {
    pub table: TableName,
    pub column: String,
    /// The warning with its remedy, the same text wherever it is shown.
    pub message: String,
}

/// The sequence-key warnings of `tables` on the primary `client` of site `site`, one of the
/// writing `sites` (sorted, as [`writing_sites`] gives them). None with fewer than two.
pub async fn sequence_key_warnings(client: &Client, tables: &[TableName], sites: &[String], site: &str) -> Vec<SequenceKeyWarning> {
    let mut out = Vec::new();
    if sites.len() < 2 {
        return out;
    }
    let Some(index) = sites.iter().position(|s| s == site).map(|i| i + 1) else { return out };
    // Sequences owned by a column (serial: 'a', identity: 'i'), their step and last value.
    let q = "SELECT a.attname::text, quote_ident(sn.nspname) || '.' || quote_ident(sc.relname), s.seqincrement, \
             greatest(coalesce(pg_sequence_last_value(s.seqrelid), s.seqstart), 0) \
             FROM pg_attribute a \
             JOIN pg_depend d ON d.refobjid = a.attrelid AND d.refobjsubid = a.attnum \
             AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
             JOIN pg_sequence s ON s.seqrelid = d.objid \
             JOIN pg_class sc ON sc.oid = s.seqrelid JOIN pg_namespace sn ON sn.oid = sc.relnamespace \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped";
    for t in tables {
        let Ok(rows) = client.query(q, &[&quoted(t)]).await else { continue };
        for row in rows {
            let (column, seq, step, last): (String, String, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
            if step.unsigned_abs() >= sites.len() as u64 {
                continue;
            }
            let message = format!(
                "{t}.{column} takes its values from sequence {seq} (increment {step}), and {} sites take writes ({}): \
                 rows inserted at two sites get the same keys and collide; give each site its own values — here (site {site}): \
                 `{}` (on each site, with its own offset, after replication has caught up) — or use uuid keys",
                sites.len(),
                sites.join(", "),
                per_site_sequence(&seq, sites.len(), index, last)
            );
            out.push(SequenceKeyWarning { table: t.clone(), column, message });
        }
    }
    out
}

/// A site that takes writes runs the policy this one does: what its capgate last recorded on
/// its primary (`capgate.local_site`) equals this policy's fingerprint.
async fn same_policy(c: &mut Checks, client: &Client, policy: &Policy, peer: &str) {
    let theirs = match client.query_opt("SELECT name, policy FROM capgate.local_site", &[]).await {
        Ok(Some(row)) => row.get::<_, Option<String>>(1).map(|p| (row.get::<_, String>(0), p)),
        Ok(None) | Err(_) => None,
    };
    let Some((name, theirs)) = theirs else {
        c.add(
            Outcome::Warn,
            format!("site {peer} has recorded no policy yet (its capgate has not run against this database): cannot compare policies"),
        );
        return;
    };
    let ours = policy.fingerprint();
    if theirs == ours {
        c.add(Outcome::Ok, format!("site {name} runs the same policy"));
        return;
    }
    let differs = ours.lines().zip(theirs.lines()).find(|(a, b)| a != b).map(|(a, b)| format!("here `{a}`, there `{b}`"));
    let differs = differs.unwrap_or_else(|| format!("{} rule line(s) here, {} there", ours.lines().count(), theirs.lines().count()));
    c.add(
        Outcome::Warn,
        format!("site {name} runs a different policy ({differs}): sites that replicate to each other must run the same policy file"),
    );
}

/// Every check on the PostgreSQL primary and each replica of `config`, in order, one per line.
pub(super) async fn check_all(config: &Config, policy: &Policy) -> Vec<Check> {
    let mut c = Checks { server: "primary".into(), out: Vec::new() };
    let mut tables = Vec::new();
    let mut no_key = Vec::new();
    if let Some(primary) = connect(&mut c, &config.primary.url).await {
        schema_privilege(&mut c, &primary).await;
        match replicated_tables(&primary, policy).await {
            Ok(t) => tables = t,
            Err(e) => c.add(Outcome::Warn, format!("cannot list the tables: {e}")),
        }
        let all: Vec<TableName> = primary
            .query(USER_TABLES, &[])
            .await
            .map(|rows| rows.iter().map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1))).collect())
            .unwrap_or_default();
        dangling_rules(&mut c, policy, &all);
        no_key = keyless(&primary, &tables).await;
        sequence_keys(&mut c, &primary, &tables, &writing_sites(config), &config.site).await;
        let names: Vec<String> = tables.iter().map(ToString::to_string).collect();
        let list = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
        c.add(Outcome::Ok, format!("{} table(s) the policy replicates: {list}", tables.len()));
    }
    for replica in &config.replicas {
        let mut r = Checks { server: format!("replica {}", replica.name), out: Vec::new() };
        if let Some(client) = connect(&mut r, &replica.url).await {
            schema_privilege(&mut r, &client).await;
            prepared_transactions(&mut r, &client, policy).await;
            tables_on_replica(&mut r, &client, &tables, &no_key).await;
            if replica.takes_writes {
                same_policy(&mut r, &client, policy, &replica.name).await;
            }
        }
        c.out.extend(r.out);
    }
    c.out
}

/// A replica's configuration problems (not its reachability: a partition is the health
/// loop's business), for `/status`. Empty when it cannot be reached.
pub async fn replica_problems(replica: &Replica, policy: &Policy) -> Vec<String> {
    let mut c = Checks { server: replica.name.clone(), out: Vec::new() };
    let Ok(upstream) = Upstream::new(replica.url.clone()) else { return Vec::new() };
    let Ok(Ok(client)) = tokio::time::timeout(replica.url.connect_timeout * 2, upstream.client("capgate checks")).await else {
        return Vec::new();
    };
    let work = async {
        prepared_transactions(&mut c, &client, policy).await;
        schema_privilege(&mut c, &client).await;
    };
    if tokio::time::timeout(std::time::Duration::from_secs(10), work).await.is_err() {
        return Vec::new();
    }
    c.out.into_iter().filter(|x| x.outcome == Outcome::Fail).map(|x| x.message).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_writing_site_gets_its_own_residue_past_the_current_values() {
        assert_eq!(per_site_sequence("public.t_id_seq", 2, 1, 41), "ALTER SEQUENCE public.t_id_seq INCREMENT BY 2 RESTART WITH 43");
        assert_eq!(per_site_sequence("public.t_id_seq", 2, 2, 41), "ALTER SEQUENCE public.t_id_seq INCREMENT BY 2 RESTART WITH 42");
        assert_eq!(per_site_sequence("s", 3, 3, 0), "ALTER SEQUENCE s INCREMENT BY 3 RESTART WITH 3");
        let text = "site = \"west\"\n[primary]\nurl = \"postgres://h/d\"\n\
                    [[replicas]]\nname = \"east\"\nurl = \"postgres://e/d\"\ntakes_writes = true\n\
                    [[replicas]]\nname = \"reader\"\nurl = \"postgres://r/d\"\n";
        let config = Config::parse(text, std::path::Path::new("c.toml")).unwrap();
        assert_eq!(writing_sites(&config), vec!["east".to_owned(), "west".to_owned()], "replicas that only read are not counted");
    }
}
