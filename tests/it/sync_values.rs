//! Sync mode makes the same rows on both sites, because it ships the rows the primary wrote:
//! generated keys from concurrent clients, time functions, random values and uuids,
//! extended-protocol parameters of several types, DDL.

use crate::async_mode::{async_proxy, drained, shipping};
use crate::replication::{on_both, own_link, primary_rows, proxy, replica_rows, verify_equal, verify_equal_for};
use crate::support::connect;
use std::time::Duration;

const POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"public.sv_*\"\nmode = \"sync\"\n";

#[tokio::test]
async fn generated_keys_and_time_reach_the_replica_with_the_primary_values() {
    let _one = crate::replication::exclusive().await;
    on_both(
        "DROP TABLE IF EXISTS sv_orders, sv_events; \
         CREATE TABLE sv_orders (id serial PRIMARY KEY, client int, n int, at timestamptz DEFAULT now()); \
         CREATE TABLE sv_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text, at timestamptz NOT NULL)",
    )
    .await;
    // The replica's sequence starts elsewhere: values must come from the primary.
    connect(&crate::replication::bed().b_replica_url_direct())
        .await
        .batch_execute("SELECT setval('sv_orders_id_seq', 5000)")
        .await
        .unwrap();
    let link = own_link();
    let p = proxy("sync-values", POLICY, &link, "pool_size = 8").await;
    let url = p.url("postgres", "postgres");
    let mut tasks = Vec::new();
    for client in 0..4i32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let app = connect(&url).await;
            for n in 0..10i32 {
                if n % 2 == 0 {
                    app.batch_execute(&format!("INSERT INTO sv_orders (client, n) VALUES ({client}, {n})")).await.unwrap();
                } else {
                    app.execute("INSERT INTO sv_orders (client, n) VALUES ($1, $2)", &[&client, &n]).await.unwrap();
                }
            }
            app.batch_execute("INSERT INTO sv_events (what, at) VALUES ('simple', now()), ('two rows', current_timestamp)").await.unwrap();
            app.execute("INSERT INTO sv_events (what, at) VALUES ($1, now())", &[&"prepared"]).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(primary_rows("SELECT count(*), count(DISTINCT id) FROM sv_orders").await, vec!["40|40"]);
    // A sync commit answers once the primary has committed; the replica's COMMIT PREPARED
    // follows off the client's path.
    crate::replication::wait_until("the replica's 12 events", Duration::from_secs(10), async || {
        replica_rows("SELECT count(*) FROM sv_events").await == vec!["12"]
    })
    .await;
    verify_equal(&["public.sv_orders", "public.sv_events"]).await;
}

#[tokio::test]
async fn random_values_and_uuids_reach_the_replica_as_the_primary_made_them() {
    let _one = crate::replication::exclusive().await;
    on_both(
        "DROP TABLE IF EXISTS sv_rand; \
         CREATE TABLE sv_rand (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), r float8, at timestamptz DEFAULT clock_timestamp())",
    )
    .await;
    let link = own_link();
    let p = proxy("sync-random", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    app.batch_execute("INSERT INTO sv_rand (r) VALUES (random())").await.unwrap();
    app.batch_execute("INSERT INTO sv_rand (r) SELECT random() FROM generate_series(1, 50)").await.unwrap();
    app.execute("INSERT INTO sv_rand (r) VALUES (random() * $1)", &[&2.5f64]).await.unwrap();
    app.batch_execute("UPDATE sv_rand SET r = r + random() WHERE r < 0.5").await.unwrap();
    assert_eq!(primary_rows("SELECT count(*) FROM sv_rand").await, vec!["52"]);
    verify_equal(&["public.sv_rand"]).await;
}

#[tokio::test]
async fn ddl_on_sync_tables_runs_on_both_sites() {
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS sv_ddl, sv_created").await;
    on_both("CREATE TABLE sv_ddl (id int PRIMARY KEY)").await;
    let link = own_link();
    let p = proxy("sync-ddl", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    app.batch_execute("ALTER TABLE sv_ddl ADD COLUMN note text DEFAULT 'x'").await.unwrap();
    app.batch_execute("INSERT INTO sv_ddl (id) VALUES (1)").await.unwrap();
    // A new table matching a sync rule is created on both sites, atomically.
    app.batch_execute("CREATE TABLE sv_created (k text PRIMARY KEY, v int)").await.unwrap();
    app.execute("INSERT INTO sv_created VALUES ($1, $2)", &[&"a", &1i32]).await.unwrap();
    // What PostgreSQL cannot run inside a transaction block runs on the primary as it came
    // (an index is not data: it is not replicated).
    app.batch_execute("CREATE INDEX CONCURRENTLY sv_ddl_note ON sv_ddl (note)").await.unwrap();
    assert_eq!(primary_rows("SELECT count(*) FROM pg_indexes WHERE indexname = 'sv_ddl_note'").await, vec!["1"]);
    assert_eq!(replica_rows("SELECT note FROM sv_ddl").await, vec!["x"]);
    assert_eq!(replica_rows("SELECT v FROM sv_created").await, vec!["1"]);
    verify_equal(&["public.sv_ddl", "public.sv_created"]).await;
}

/// Every column type whose text depends on a session setting, in both a sync and an async
/// table. The capture trigger writes each row as JSON in the writer's session; the replica
/// reads it back with its own fixed settings. Rows are inserted with one set of settings and
/// updated with another (the old image must still match the replica's row: a sync UPDATE of
/// a row whose old image reads differently is an `update_differs` conflict and fails).
const SETTINGS_TABLE: &str = "(id int PRIMARY KEY, who text, d date, t time, ttz timetz, ts timestamp, tstz timestamptz, \
     iv interval, b bytea, f4 float4, f8 float8, n numeric, m money, tr tstzrange, dr daterange, ivs interval[], tstzs timestamptz[])";

/// `(settings, who)`: client sessions as applications configure them. The only locales on
/// this machine are C, C.utf8 and POSIX, so lc_monetary only moves between those.
const SESSIONS: [(&str, &str); 4] = [
    // Prints every value as the replica reads it, in its own time zone and bytea format:
    // the trigger takes the session's text as it is (decision 0025).
    (
        "SET TimeZone = 'America/St_Johns'; SET DateStyle = 'ISO, DMY'; SET bytea_output = 'escape'; SET extra_float_digits = 2",
        "iso-stjohns-escape",
    ),
    (
        "SET DateStyle = 'German, DMY'; SET TimeZone = 'Asia/Kolkata'; SET IntervalStyle = 'sql_standard'; \
         SET bytea_output = 'escape'; SET extra_float_digits = -3; SET lc_monetary = 'C.utf8'",
        "german-kolkata-sqlstd",
    ),
    (
        "SET DateStyle = 'SQL, MDY'; SET TimeZone = 'America/St_Johns'; SET IntervalStyle = 'iso_8601'; \
         SET extra_float_digits = 0",
        "sql-stjohns-iso",
    ),
    (
        "SET DateStyle = 'Postgres, YMD'; SET TimeZone = 'Pacific/Kiritimati'; SET IntervalStyle = 'postgres_verbose'; \
         SET bytea_output = 'escape'; SET extra_float_digits = 3; SET lc_monetary = 'POSIX'",
        "postgres-kiritimati-verbose",
    ),
];

/// Four rows of awkward values for session `s` (ids `s*10 + 1..=4`), written as ISO and
/// explicit-sign literals that every DateStyle and IntervalStyle reads the same way.
fn awkward_rows(table: &str, s: usize, who: &str) -> String {
    let id = |k: usize| s * 10 + k;
    format!(
        "INSERT INTO {table} VALUES \
         ({}, '{who}', '2024-02-29', '23:59:59.999999', '12:34:56.789+05:30', '2024-02-29 23:59:59.123456', \
          '2024-02-29 23:59:59.123456+00', '-1 years +2 mons -3 days +04:05:06.789', '\\x5c00ff5c27', \
          1.0/3, 1.0/3, 1.0/3, 1234567.89, '[2024-01-01 00:00:00+00,2024-07-01 12:30:00.5+00)', '[2024-01-01,2024-03-01)', \
          ARRAY['-1 days +02:00:00', '+1 mons -00:00:00.5']::interval[], ARRAY['2024-06-30 23:59:60+00', '1900-01-01 00:00:00+00']::timestamptz[]), \
         ({}, '{who}', '0044-03-15 BC', '00:00:00', '00:00:00-12:00', '0044-03-15 12:00:00 BC', '1880-01-01 00:00:00.000001+00', \
          '-1 days -02:03:04.5', E'\\\\x', 1e-38, 1e-300, 1e-300::numeric, -0.01, '[1880-01-01 00:00:00+00,)', '(,2024-01-01]', \
          ARRAY['-00:00:00.000001']::interval[], ARRAY['0044-03-15 12:00:00+00 BC']::timestamptz[]), \
         ({}, '{who}', 'infinity', '24:00:00', '23:59:59.999999-15:59', 'infinity', '-infinity', \
          '+100000000 years +11 mons', '\\x00', 'NaN', 'Infinity', 'NaN', 0, 'empty', 'empty', NULL, ARRAY['infinity']::timestamptz[]), \
         ({}, '{who}', '-infinity', '12:00:00.5', '12:00:00+00', '-infinity', 'infinity', \
          '+1 mons -29 days +23:59:59.999999', '\\x000102', '-0', '-Infinity', '-123456789012345678901234567890.123456789', \
          -92233720368547758.08, '(-infinity,infinity)', '[-infinity,infinity]', ARRAY[NULL, '0']::interval[], NULL)",
        id(1),
        id(2),
        id(3),
        id(4)
    )
}

#[tokio::test]
async fn values_written_under_any_session_settings_reach_the_replica_exactly() {
    let _one = crate::replication::exclusive().await;
    let site = "sv_settings_site";
    on_both(&format!(
        "DROP TABLE IF EXISTS sv_settings_sync, sv_settings_async; \
         CREATE TABLE sv_settings_sync {SETTINGS_TABLE}; CREATE TABLE sv_settings_async {SETTINGS_TABLE}"
    ))
    .await;
    let policy = "default = \"local\"\n[[table]]\nmatch = \"public.sv_settings_sync\"\nmode = \"sync\"\n\
                  [[table]]\nmatch = \"public.sv_settings_async\"\nmode = \"async\"\n";
    let link = own_link();
    let p = async_proxy(site, policy, &link).await;
    let admin = p.admin.expect("admin listener");
    shipping(admin).await;
    let url = p.url("postgres", "postgres");
    for (s, (settings, who)) in SESSIONS.iter().enumerate() {
        let app = connect(&url).await;
        app.batch_execute(settings).await.unwrap_or_else(|e| panic!("{settings}: {e:?}"));
        for table in ["sv_settings_sync", "sv_settings_async"] {
            app.batch_execute(&awkward_rows(table, s, who)).await.unwrap_or_else(|e| panic!("{who} into {table}: {e:?}"));
        }
    }
    // Each session now changes the rows another session wrote (the old images are printed
    // with the new session's settings), then deletes one, inside a transaction.
    for (s, (settings, who)) in SESSIONS.iter().enumerate() {
        let app = connect(&url).await;
        app.batch_execute(settings).await.unwrap();
        let other = (s + 1) % SESSIONS.len();
        for table in ["sv_settings_sync", "sv_settings_async"] {
            let (lo, hi) = (other * 10 + 1, other * 10 + 4);
            app.batch_execute("BEGIN").await.unwrap();
            app.batch_execute(&format!(
                "UPDATE {table} SET who = who || ' then {who}', iv = iv * -1.5, tstz = tstz + '1 microsecond', f8 = f8 / 7 \
                  WHERE id BETWEEN {lo} AND {hi}; \
                 DELETE FROM {table} WHERE id = {lo}"
            ))
            .await
            .unwrap_or_else(|e| panic!("{who} updating {table}: {e:?}"));
            app.batch_execute("COMMIT").await.unwrap_or_else(|e| panic!("{who} updating {table}: {e:?}"));
        }
    }
    drained(site, admin).await;
    for table in ["sv_settings_sync", "sv_settings_async"] {
        // Value by value, read on each site with the same (default) settings and all digits.
        let sql = format!("SET extra_float_digits = 3; SELECT * FROM {table} ORDER BY id");
        let primary = primary_rows(&sql).await;
        assert_eq!(primary.len(), 12, "{table}: {primary:#?}");
        assert_eq!(replica_rows(&sql).await, primary, "{table}");
    }
    verify_equal_for(site, &["public.sv_settings_sync", "public.sv_settings_async"]).await;
}
