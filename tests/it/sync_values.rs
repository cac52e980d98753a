//! Sync mode makes the same rows on both sites: generated keys from concurrent clients,
//! pinned time functions, extended-protocol parameters of several types.

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
    // The replica's sequence moved past the primary's values: a failover would not collide.
    let max: Vec<String> = primary_rows("SELECT max(id) FROM sv_orders").await;
    let last: Vec<String> = replica_rows("SELECT last_value FROM sv_orders_id_seq").await;
    assert!(last[0].parse::<i64>().unwrap() >= max[0].parse::<i64>().unwrap().max(5000), "replica sequence {last:?}, primary max {max:?}");
}

#[tokio::test]
async fn random_values_are_refused_by_name() {
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS sv_rand; CREATE TABLE sv_rand (id int PRIMARY KEY, r float8)").await;
    let link = own_link();
    let p = proxy("sync-random", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    let e = app.batch_execute("INSERT INTO sv_rand VALUES (1, random())").await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().contains("random()") && db.message().contains("public.sv_rand"), "{}", db.message());
    assert_eq!(primary_rows("SELECT count(*) FROM sv_rand").await, vec!["0"]);
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
    // What PostgreSQL cannot run inside a transaction block is refused by the primary itself
    // (capgate wraps the statement in one): nothing happens on either site.
    let e = app.batch_execute("CREATE INDEX CONCURRENTLY sv_ddl_note ON sv_ddl (note)").await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("25001"), "{e}");
    assert_eq!(replica_rows("SELECT note FROM sv_ddl").await, vec!["x"]);
    verify_equal(&["public.sv_ddl", "public.sv_created"]).await;
}
