//! Sync mode makes the same rows on both sites, because it ships the rows the primary wrote:
//! generated keys from concurrent clients, time functions, random values and uuids,
//! extended-protocol parameters of several types, DDL.

use crate::replication::{on_both, own_link, primary_rows, proxy, replica_rows, verify_equal};
use crate::support::connect;

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
    assert_eq!(replica_rows("SELECT count(*) FROM sv_events").await, vec!["12"]);
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
