//! The determinism rewrite against a real PostgreSQL: every rewritten statement is accepted,
//! and the same statements run at two different moments on two identical tables (the
//! "primary" and the "replica") leave identical rows — while the original statements do not.
//!
//! The catalog's column defaults are read from the server itself (`pg_attrdef`), so the
//! rewrite is tested on the default expressions PostgreSQL really shows (`CURRENT_DATE`,
//! `now()`, `nextval('…'::regclass)` …).

use std::time::{Duration, SystemTime};

use capgate::classify::{Catalog, ColumnDefault, DefaultKind, Dialect, SearchPath, TableName};
use capgate::replicate::determinism::{make_deterministic, Context, Deterministic, Pins};
use capgate::testbed::PgServer;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

const DDL: &str = "CREATE TABLE {t} (
    id int PRIMARY KEY,
    k serial,
    note text,
    created_at timestamptz DEFAULT now(),
    d date DEFAULT current_date,
    lt timestamp DEFAULT localtimestamp,
    tt timetz DEFAULT current_time,
    l time DEFAULT localtime,
    s text,
    day date DEFAULT (now() AT TIME ZONE 'utc')::date
)";

/// Statements on table `{t}`, with their parameters (`$1` …) as text or int.
fn statements() -> Vec<(&'static str, Vec<Param>)> {
    use Param::*;
    vec![
        ("INSERT INTO {t} (id, note) VALUES (1, 'a'), (2, 'b')", vec![]),
        ("INSERT INTO {t} (id, note, created_at) VALUES (3, 'c', now())", vec![]),
        ("INSERT INTO {t} (id, note) SELECT g, 'g' || g FROM generate_series(10, 12) g", vec![]),
        ("INSERT INTO {t} (id, note) SELECT 20, 'u' UNION ALL SELECT 21, 'v'", vec![]),
        ("INSERT INTO {t} (id, note, d) VALUES (40, 'e', DEFAULT)", vec![]),
        ("INSERT INTO {t} (id, note) VALUES ($1, $2)", vec![Int(41), Text("param")]),
        (
            "UPDATE {t} SET note = note || to_char(now(), ' YYYY-MM-DD HH24:MI:SS.US'), d = current_date - 1 \
             WHERE id IN (SELECT id FROM {t} WHERE created_at <= clock_timestamp() ORDER BY id LIMIT 2)",
            vec![],
        ),
        (
            "INSERT INTO {t} (id, note) VALUES (1, 'again') ON CONFLICT (id) DO UPDATE SET \
             created_at = statement_timestamp(), lt = localtimestamp, tt = current_time, l = localtime, s = timeofday()",
            vec![],
        ),
        (
            "UPDATE {t} SET created_at = current_timestamp(3), lt = localtimestamp(2), tt = current_time(1), \
             s = transaction_timestamp()::text WHERE id = $1",
            vec![Int(10)],
        ),
        (
            "WITH moved AS (UPDATE {t} SET note = 'moved' WHERE id = 2 RETURNING id) \
             INSERT INTO {t} (id, note) SELECT id + 100, 'from ' || now()::date FROM moved",
            vec![],
        ),
        ("UPDATE {t} SET created_at = DEFAULT, s = $1 || now()::text WHERE id = 3", vec![Text("p:")]),
        ("DELETE FROM {t} WHERE created_at < now() - interval '1 year'", vec![]),
        ("UPDATE {t} SET created_at = 'now'::timestamptz, d = date 'tomorrow', lt = 'today' WHERE id = 12", vec![]),
        ("UPDATE {t} SET s = (SELECT max(note) FROM {t} WHERE d <= current_date) WHERE id = 11", vec![]),
    ]
}

#[derive(Debug, Clone)]
enum Param {
    Int(i32),
    Text(&'static str),
}

impl Param {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Int(i) => i,
            Param::Text(s) => s,
        }
    }
}

async fn connect() -> Client {
    let url = tokio::task::spawn_blocking(|| PgServer::shared().superuser_url()).await.unwrap_or_else(|e| panic!("{e}"));
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    // A zone far from UTC, so a date or time derived in the wrong zone would show.
    client.batch_execute("SET TimeZone = 'Pacific/Kiritimati'").await.unwrap_or_else(|e| panic!("{e}"));
    client
}

/// The columns of `schema.table` with defaults that differ per site, as a front end would
/// load them.
async fn defaults(client: &Client, schema: &str, table: &str) -> Vec<ColumnDefault> {
    let rows = client
        .query(
            "SELECT a.attname::text, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text
               FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
              WHERE d.adrelid = format('%I.%I', $1::text, $2::text)::regclass ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    rows.iter()
        .map(|r| {
            let expr: String = r.get(1);
            let identity: String = r.get(2);
            let kind = if !identity.is_empty() {
                DefaultKind::Identity
            } else if expr.contains("nextval(") {
                DefaultKind::Sequence
            } else {
                DefaultKind::Volatile
            };
            ColumnDefault { column: r.get(0), kind, expr }
        })
        .collect()
}

async fn rows(client: &Client, table: &str) -> Vec<String> {
    let sql = format!("SELECT row_to_json(x)::text FROM (SELECT * FROM {table} ORDER BY id) x");
    let rows = client.query(sql.as_str(), &[]).await.unwrap_or_else(|e| panic!("{e}"));
    rows.iter().map(|r| r.get(0)).collect()
}

/// Run every statement on `table`, rewritten with the pins of its index (or as written).
async fn run(client: &Client, schema: &str, table: &str, rewrite: bool, base: SystemTime) -> Vec<Deterministic<'static>> {
    let mut catalog = Catalog::new();
    let name = TableName::new(schema, table);
    catalog.add_table(&name);
    catalog.set_defaults(name, defaults(client, schema, table).await);
    catalog.set_complete(true);
    let path = SearchPath::new([schema]);
    let mut out = Vec::new();
    for (i, (template, params)) in statements().into_iter().enumerate() {
        let original = template.replace("{t}", table);
        let pins = Pins::at(base + Duration::from_millis(i as u64));
        let cx = Context { dialect: Dialect::Postgres, path: &path, catalog: &catalog, pins: &pins, allow: &|_| false };
        let det = make_deterministic(&original, &cx).unwrap_or_else(|e| panic!("{original}: {e}"));
        let sql = if rewrite { det.sql.to_string() } else { original.clone() };
        let args: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::as_sql).collect();
        client.execute(sql.as_str(), &args).await.unwrap_or_else(|e| panic!("PostgreSQL refused\n  {sql}\n(from {original}): {e:?}"));
        out.push(Deterministic {
            sql: det.sql.into_owned().into(),
            generated_keys: det.generated_keys,
            set_timestamp: det.set_timestamp,
            allowed: det.allowed,
        });
        // Let the clock move, so an unpinned time function would show.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_statements_make_the_same_rows_on_both_sides() {
    let client = connect().await;
    let schema = format!("det_{}", std::process::id());
    let mut setup = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema};");
    for t in ["primary_t", "replica_t", "plain_a", "plain_b"] {
        setup.push_str(&DDL.replace("{t}", t));
        setup.push(';');
    }
    client.batch_execute(&setup).await.unwrap_or_else(|e| panic!("{e}"));

    let base = SystemTime::now() - Duration::from_secs(3600);
    let on_primary = run(&client, &schema, "primary_t", true, base).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let on_replica = run(&client, &schema, "replica_t", true, base).await;

    let (p, r) = (rows(&client, "primary_t").await, rows(&client, "replica_t").await);
    assert_eq!(p.len(), 11, "{p:#?}");
    assert_eq!(p, r, "the same rewritten statements gave different rows");

    // What was rewritten, and what was reported.
    let rewritten = on_primary.iter().filter(|d| d.rewritten()).count();
    assert_eq!(rewritten, statements().len(), "{on_primary:#?}");
    for (d, e) in on_primary.iter().zip(&on_replica) {
        assert_eq!(d.sql.replace("primary_t", "replica_t"), e.sql);
    }
    let inserts_with_keys = on_primary.iter().filter(|d| d.generated_keys.iter().any(|k| k.column == "k")).count();
    assert_eq!(inserts_with_keys, 8, "every INSERT leaves k to its sequence");
    assert!(on_primary.iter().all(|d| d.allowed.is_empty() && !d.set_timestamp));

    // Without the rewrite the two tables differ (so the check above means something).
    run(&client, &schema, "plain_a", false, base).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    run(&client, &schema, "plain_b", false, base).await;
    assert_ne!(rows(&client, "plain_a").await, rows(&client, "plain_b").await);

    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_values_are_what_postgresql_would_have_computed_at_that_instant() {
    let client = connect().await;
    let now = SystemTime::now();
    let catalog = Catalog::new();
    let path = SearchPath::default();
    let pins = Pins::at(now);
    let cx = Context { dialect: Dialect::Postgres, path: &path, catalog: &catalog, pins: &pins, allow: &|_| false };
    let lit = capgate::replicate::determinism::timestamptz_literal(now);
    for f in ["now()", "current_date", "current_time", "localtimestamp", "localtime", "timeofday()", "current_timestamp(2)", "localtime(0)"]
    {
        // An INSERT so the statement is a write; the SELECT inside carries the call.
        let sql = format!("INSERT INTO pg_temp.t SELECT {f}");
        let det = make_deterministic(&sql, &cx).unwrap_or_else(|e| panic!("{e}"));
        assert!(det.rewritten(), "{f} not pinned: {}", det.sql);
        let pinned = det.sql.trim_start_matches("INSERT INTO pg_temp.t SELECT ").to_owned();
        // The same function computed by PostgreSQL with its clock at the pinned instant:
        // substitute the instant for now() in the definition of each function.
        let reference = match f {
            "now()" => format!("({lit}::timestamptz)::text"),
            "current_date" => format!("({lit}::timestamptz)::date::text"),
            "current_time" => format!("({lit}::timestamptz)::timetz::text"),
            "localtimestamp" => format!("({lit}::timestamptz)::timestamp::text"),
            "localtime" => format!("({lit}::timestamptz)::time::text"),
            "timeofday()" => {
                format!("to_char({lit}::timestamptz, 'Dy Mon DD HH24:MI:SS.US YYYY TZ')")
            }
            "current_timestamp(2)" => format!("({lit}::timestamptz(2))::text"),
            _ => format!("({lit}::timestamptz)::time(0)::text"),
        };
        let q = format!("SELECT ({pinned})::text, {reference}");
        let row = client.query_one(q.as_str(), &[]).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        let (a, b): (String, String) = (row.get(0), row.get(1));
        assert_eq!(a, b, "{f}: {q}");
        // And the pinned value has the type of the function it replaces.
        let q = format!("SELECT pg_typeof({pinned})::text = pg_typeof({f})::text, pg_typeof({pinned})::text");
        let row = client.query_one(q.as_str(), &[]).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        let (same, ty): (bool, String) = (row.get(0), row.get(1));
        assert!(same, "{f} became a {ty}");
    }
    // timeofday() looks like PostgreSQL's own.
    let row = client
        .query_one("SELECT length(timeofday()) = length(to_char(now(), 'Dy Mon DD HH24:MI:SS.US YYYY TZ'))", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(row.get::<_, bool>(0));
}
