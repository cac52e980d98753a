//! Everyday application SQL through the proxy (the workload; tests/it/apps/everyday.rs runs it
//! in every mode): the sites must end identical,
//! whatever the SQL (functions, DO blocks, triggers that write other tables or stamp the
//! clock, COPY, INSERT … SELECT into serial tables, upserts, writable CTEs, TRUNCATE), and
//! whatever the protocol does (pipelined BEGIN, prepared COMMIT, implicit transactions).

use futures_util::future::join_all;

use crate::replication::{on_both, own_link, primary_rows, proxy, replica_rows, verify_equal};
use crate::support::{connect, sqlstate};

const POLICY: &str = "default = \"local\"\n[[table]]\nmatch = \"public.ss_*\"\nmode = \"sync\"\n";

pub(crate) const SCHEMA: &str = "DROP TABLE IF EXISTS ss_acct, ss_audit, ss_orders, ss_items, ss_ident, ss_big, lo_ss_log CASCADE; \
     DROP FUNCTION IF EXISTS ss_transfer(int, int, int); DROP FUNCTION IF EXISTS ss_stamp(); \
     CREATE TABLE ss_acct (id int PRIMARY KEY, balance numeric(12,2) NOT NULL); \
     CREATE TABLE ss_audit (id bigserial PRIMARY KEY, acct int, delta numeric(12,2), at timestamptz NOT NULL); \
     CREATE TABLE ss_orders (id serial PRIMARY KEY, ref uuid NOT NULL DEFAULT gen_random_uuid(), qty int, note text); \
     CREATE TABLE ss_items (sku text PRIMARY KEY, stock int NOT NULL); \
     CREATE TABLE ss_ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text); \
     CREATE TABLE ss_big (id int PRIMARY KEY, v text NOT NULL); \
     CREATE TABLE lo_ss_log (msg text); \
     CREATE FUNCTION ss_transfer(a int, b int, amount int) RETURNS void LANGUAGE plpgsql AS $$ \
       BEGIN UPDATE ss_acct SET balance = balance - amount WHERE id = a; \
             UPDATE ss_acct SET balance = balance + amount WHERE id = b; END $$; \
     CREATE FUNCTION ss_stamp() RETURNS trigger LANGUAGE plpgsql AS $$ \
       BEGIN INSERT INTO ss_audit (acct, delta, at) VALUES (NEW.id, NEW.balance - coalesce(OLD.balance, 0), clock_timestamp()); \
       RETURN NEW; END $$;";

/// The primary has an audit trigger the replica does not need: its rows arrive as rows.
pub(crate) const PRIMARY_ONLY: &str =
    "CREATE TRIGGER ss_audit_trg AFTER INSERT OR UPDATE ON ss_acct FOR EACH ROW EXECUTE FUNCTION ss_stamp()";

pub(crate) const TABLES: &[&str] =
    &["public.ss_acct", "public.ss_audit", "public.ss_orders", "public.ss_items", "public.ss_ident", "public.ss_big"];

/// Everyday application SQL through capgate at `url` (tables of [`SCHEMA`], the trigger of
/// [`PRIMARY_ONLY`] on the primary), and writes made directly on the primary at `direct`.
/// Checks what it can on the primary; the caller verifies the sites.
pub(crate) async fn everyday_workload(url: &str, direct: &str) {
    let app = connect(url).await;

    // A trigger on the primary stamps the clock into another sync table.
    app.batch_execute("INSERT INTO ss_acct VALUES (1, 100), (2, 50)").await.unwrap();
    // A PL/pgSQL function that writes sync tables, called in autocommit and in a transaction.
    app.batch_execute("SELECT ss_transfer(1, 2, 10)").await.unwrap();
    app.batch_execute("BEGIN").await.unwrap();
    app.query("SELECT ss_transfer($1, $2, $3)", &[&2i32, &1i32, &5i32]).await.unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    // A DO block.
    app.batch_execute("DO $$ BEGIN UPDATE ss_acct SET balance = balance * 2 WHERE id = 2; END $$").await.unwrap();
    // INSERT … SELECT into a serial table with a uuid default; a writable CTE; an upsert.
    app.batch_execute("INSERT INTO ss_orders (qty, note) SELECT g, 'bulk' FROM generate_series(1, 20) g").await.unwrap();
    app.batch_execute("WITH moved AS (UPDATE ss_orders SET qty = qty + 1 WHERE qty > 15 RETURNING id) INSERT INTO lo_ss_log SELECT 'moved ' || count(*) FROM moved")
        .await
        .unwrap();
    app.batch_execute("INSERT INTO ss_items VALUES ('a', 1), ('b', 2)").await.unwrap();
    app.batch_execute(
        "INSERT INTO ss_items VALUES ('a', 10), ('c', 3) ON CONFLICT (sku) DO UPDATE SET stock = ss_items.stock + EXCLUDED.stock",
    )
    .await
    .unwrap();
    // COPY FROM STDIN in autocommit and inside a transaction.
    let sink = app.copy_in("COPY ss_orders (qty, note) FROM STDIN (FORMAT csv)").await.unwrap();
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    sink.send(bytes::Bytes::from_static(b"100,copied\n101,\"copied, quoted\"\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    app.batch_execute("BEGIN").await.unwrap();
    let sink = app.copy_in("COPY ss_items FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"d\t4\ne\t5\n")).await.unwrap();
    sink.finish().await.unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    // TRUNCATE, then rows again, in one transaction.
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("TRUNCATE ss_items").await.unwrap();
    app.batch_execute("INSERT INTO ss_items VALUES ('z', 26)").await.unwrap();
    app.batch_execute("COMMIT").await.unwrap();

    assert_eq!(primary_rows("SELECT sku, stock FROM ss_items").await, vec!["z|26"]);
    assert_eq!(replica_rows("SELECT count(*) FROM lo_ss_log").await, vec!["0"], "local tables stay local");

    // Identity columns in INSERT … VALUES and INSERT … SELECT; several statements in one Query.
    app.batch_execute(
        "INSERT INTO ss_ident (v) VALUES ('one'), ('two'); INSERT INTO ss_ident (v) SELECT 'sel ' || g FROM generate_series(1, 5) g",
    )
    .await
    .unwrap();
    app.batch_execute(
        "UPDATE ss_ident SET v = v || '!' WHERE id % 2 = 0; DELETE FROM ss_ident WHERE id = 3; INSERT INTO ss_items VALUES ('y', 25)",
    )
    .await
    .unwrap();
    // COPY in binary format (the data made by the primary itself).
    let binary = {
        use futures_util::TryStreamExt;
        let d = connect(direct).await;
        let out =
            d.copy_out("COPY (SELECT 200000 + g, 'binary ' || g FROM generate_series(1, 50) g) TO STDOUT (FORMAT binary)").await.unwrap();
        let chunks: Vec<bytes::Bytes> = out.try_collect().await.unwrap();
        chunks.concat()
    };
    let sink = app.copy_in("COPY ss_big FROM STDIN (FORMAT binary)").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(binary)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 50);
    // A transaction of 100,000 rows (and an update of a tenth of them).
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("INSERT INTO ss_big SELECT g, 'row ' || g FROM generate_series(1, 100000) g").await.unwrap();
    app.batch_execute("UPDATE ss_big SET v = v || '.' WHERE id % 10 = 0").await.unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    // Writes made directly on the primary, without capgate (a DBA's psql, a cron job): captured
    // there and shipped too.
    let dba = connect(direct).await;
    dba.batch_execute(
        "INSERT INTO ss_items VALUES ('direct', 1); UPDATE ss_big SET v = 'by the dba' WHERE id = 7; DELETE FROM ss_ident WHERE id = 1",
    )
    .await
    .unwrap();
    dba.batch_execute("BEGIN; UPDATE ss_acct SET balance = balance + 1; SELECT ss_transfer(1, 2, 1); COMMIT").await.unwrap();
    assert_eq!(primary_rows("SELECT count(*) FROM ss_big").await, vec!["100050"]);
}

#[tokio::test]
async fn a_commit_inside_a_multi_statement_string_is_refused_not_half_replicated() {
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS ss_multi; CREATE TABLE ss_multi (id int PRIMARY KEY)").await;
    let link = own_link();
    let p = proxy("sync-multi", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    let e = app.batch_execute("BEGIN; INSERT INTO ss_multi VALUES (1); COMMIT").await.unwrap_err();
    assert_eq!(sqlstate(&e), "CGS01", "{e}");
    let db = e.as_db_error().unwrap();
    assert!(db.message().contains("public.ss_multi") && db.message().contains("nothing was committed"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("COMMIT sent as its own statement"));
    assert_eq!(primary_rows("SELECT count(*) FROM ss_multi").await, vec!["0"]);
    // The session goes on normally.
    app.batch_execute("INSERT INTO ss_multi VALUES (2)").await.unwrap();
    verify_equal(&["public.ss_multi"]).await;
}

#[tokio::test]
async fn pipelined_and_prepared_transaction_control_is_honoured() {
    let _one = crate::replication::exclusive().await;
    on_both("DROP TABLE IF EXISTS ss_pipe; CREATE TABLE ss_pipe (id int PRIMARY KEY, v text)").await;
    let link = own_link();
    let p = proxy("sync-pipe", POLICY, &link, "").await;
    let app = connect(&p.url("postgres", "postgres")).await;
    // BEGIN pipelined with the first write (as some drivers send it), then ROLLBACK: nothing
    // may reach either site.
    let begin = app.prepare("BEGIN").await.unwrap();
    let insert = app.prepare("INSERT INTO ss_pipe VALUES ($1, $2)").await.unwrap();
    let rollback = app.prepare("ROLLBACK").await.unwrap();
    let commit = app.prepare("COMMIT").await.unwrap();
    let r = join_all(vec![
        Box::pin(app.execute(&begin, &[])) as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
        Box::pin(app.execute(&insert, &[&1i32, &"rolled back"])),
        Box::pin(app.execute(&rollback, &[])),
    ])
    .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    // The same with COMMIT: committed on both sites, atomically.
    let r = join_all(vec![
        Box::pin(app.execute(&begin, &[])) as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
        Box::pin(app.execute(&insert, &[&2i32, &"pipelined"])),
        Box::pin(app.execute(&insert, &[&3i32, &"pipelined too"])),
        Box::pin(app.execute(&commit, &[])),
    ])
    .await;
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    // Autocommit prepared writes, pipelined: each its own implicit transaction.
    let ids: Vec<i32> = (10..20).collect();
    let writes = join_all(ids.iter().map(|i| {
        let (app, insert) = (&app, &insert);
        async move { app.execute(insert, &[i, &"implicit"]).await }
    }))
    .await;
    assert!(writes.iter().all(Result::is_ok));
    // A prepared COMMIT of a transaction that failed: PostgreSQL's answer, nothing written.
    app.execute(&begin, &[]).await.unwrap();
    app.execute(&insert, &[&30i32, &"x"]).await.unwrap();
    assert!(app.execute(&insert, &[&30i32, &"duplicate"]).await.is_err());
    app.execute(&commit, &[]).await.unwrap();
    assert_eq!(primary_rows("SELECT count(*) FROM ss_pipe").await, vec!["12"]);
    assert_eq!(replica_rows("SELECT count(*) FROM ss_pipe WHERE id = 1 OR id = 30").await, vec!["0"]);
    verify_equal(&["public.ss_pipe"]).await;
}
