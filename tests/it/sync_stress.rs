//! Many sessions at once, each writing a sync table in every shape that makes capgate take the
//! session over and hand it back: multi-statement autocommit Queries (wrapped in capgate's own
//! BEGIN), autocommit extended-protocol writes (with the Close and Sync a driver pipelines after
//! them), blocks with savepoints, blocks rolled back and blocks aborted by an error. Every write
//! the client saw succeed must be on both sites; every write it saw fail or rolled back must be
//! on neither, whatever the interleaving.

use std::collections::BTreeSet;

use futures_util::future::join_all;

use crate::replication::{on_both, own_link, primary_rows, proxy, replica_rows, replica_settled, verify_equal, SYNC_POLICY};
use crate::support::connect;

/// Sessions writing at once.
const SESSIONS: i32 = 4;
/// Rounds per session; each round writes three rows and tries a fourth.
const ROUNDS: i32 = 15;

/// What one round left: the rows it committed, as `id|n|note`, and the ids it must not leave.
#[derive(Default)]
struct Outcome {
    committed: Vec<String>,
    absent: Vec<i32>,
}

/// One round of session `s`, on ids `base + 1 ..= base + 4`.
async fn round(app: &tokio_postgres::Client, base: i32) -> Outcome {
    let mut out = Outcome::default();
    let (one, two, three, four) = (base + 1, base + 2, base + 3, base + 4);
    // Several statements in one autocommit Query: one transaction, on both sites or nowhere.
    let many = format!("INSERT INTO sy_many VALUES ({three}, 1, 'many'); UPDATE sy_many SET note = 'many, updated' WHERE id = {three}");
    match app.batch_execute(&many).await {
        Ok(()) => out.committed.push(format!("{three}|1|many, updated")),
        Err(e) => {
            refused(&e);
            out.absent.push(three);
        }
    }
    // An autocommit extended-protocol write (the driver closes its statement afterwards,
    // pipelined with what follows).
    match app.execute("INSERT INTO sy_many VALUES ($1, $2, $3)", &[&one, &100i32, &"one"]).await {
        Ok(_) => out.committed.push(format!("{one}|100|one")),
        Err(e) => {
            refused(&e);
            out.absent.push(one);
        }
    }
    // A block with a local table and a savepoint rolled back to.
    let block = async {
        app.batch_execute("BEGIN").await?;
        app.execute("INSERT INTO sy_many VALUES ($1, $2, $3)", &[&two, &200i32, &"two"]).await?;
        app.batch_execute("INSERT INTO lo_many_log VALUES ('two')").await?;
        app.batch_execute("SAVEPOINT s1").await?;
        app.batch_execute(&format!("UPDATE sy_many SET n = n + 30 WHERE id = {two}")).await?;
        app.batch_execute("ROLLBACK TO SAVEPOINT s1").await?;
        app.batch_execute(&format!("UPDATE sy_many SET n = n + 7 WHERE id = {two}")).await?;
        app.batch_execute("COMMIT").await
    };
    match block.await {
        Ok(()) => out.committed.push(format!("{two}|207|two")),
        Err(e) => {
            refused(&e);
            let _ = app.batch_execute("ROLLBACK").await;
            out.absent.push(two);
        }
    }
    // A block rolled back leaves nothing anywhere.
    app.batch_execute("BEGIN").await.expect("BEGIN");
    let _ = app.batch_execute(&format!("INSERT INTO sy_many VALUES ({four}, 1, 'rolled back')")).await;
    app.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    out.absent.push(four);
    // A block aborted by an error: its COMMIT rolls back.
    app.batch_execute("BEGIN").await.expect("BEGIN");
    let _ = app.batch_execute(&format!("INSERT INTO sy_many VALUES ({four}, 1, 'aborted')")).await;
    let e = app.batch_execute(&format!("INSERT INTO sy_many VALUES ({four}, -1, 'check')")).await.expect_err("the CHECK fails");
    assert!(e.as_db_error().is_some(), "{e:?}");
    app.batch_execute("COMMIT").await.expect("COMMIT of an aborted block answers ROLLBACK");
    out
}

/// A write may be refused (the replica seen as partitioned under load); nothing else may fail.
fn refused(e: &tokio_postgres::Error) {
    let code = e.as_db_error().map(|d| d.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("55000"), "only a refusal may fail a write: {e:?}");
}

#[tokio::test]
async fn every_acknowledged_write_of_many_sessions_is_on_both_sites() {
    let _one = crate::replication::exclusive().await;
    on_both(
        "DROP TABLE IF EXISTS sy_many, lo_many_log; \
         CREATE TABLE sy_many (id int PRIMARY KEY, n int NOT NULL CHECK (n >= 0), note text); \
         CREATE TABLE lo_many_log (msg text)",
    )
    .await;
    let link = own_link();
    let p = proxy("sync-many", SYNC_POLICY, &link, "").await;
    let url = p.url("postgres", "postgres");
    let sessions = join_all((0..SESSIONS).map(|s| {
        let url = url.clone();
        async move {
            let app = connect(&url).await;
            let mut all = Outcome::default();
            for r in 0..ROUNDS {
                let out = round(&app, (s * ROUNDS + r) * 10).await;
                all.committed.extend(out.committed);
                all.absent.extend(out.absent);
            }
            all
        }
    }))
    .await;
    let committed: BTreeSet<String> = sessions.iter().flat_map(|o| o.committed.iter().cloned()).collect();
    let absent: Vec<String> = sessions.iter().flat_map(|o| o.absent.iter().map(|i| i.to_string())).collect();
    assert!(!committed.is_empty(), "every write was refused");
    let on = |rows: Vec<String>| rows.into_iter().collect::<BTreeSet<String>>();
    let all = "SELECT id, n, note FROM sy_many";
    let primary = on(primary_rows(all).await);
    let lost: Vec<&String> = committed.difference(&primary).collect();
    let extra: Vec<&String> = primary.difference(&committed).collect();
    assert!(lost.is_empty() && extra.is_empty(), "on the primary: acknowledged but missing {lost:?}; not acknowledged but there {extra:?}");
    replica_settled().await;
    let replica = on(replica_rows(all).await);
    assert_eq!(replica, committed, "on the replica");
    let nowhere = format!("SELECT count(*) FROM sy_many WHERE id IN ({})", absent.join(","));
    assert_eq!(primary_rows(&nowhere).await, vec!["0"]);
    verify_equal(&["public.sy_many"]).await;
}
