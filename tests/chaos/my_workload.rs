//! The MariaDB chaos suite's clients (tests/chaos_mysql.rs): what they send through capgate
//! with mysql_async and what they record. Each operation inserts rows with the client's own
//! keys and/or increments one of the two hot rows, in one of these shapes: a single INSERT or
//! hot-row UPDATE; a multi-row INSERT; a hot-row increment by `INSERT … ON DUPLICATE KEY
//! UPDATE`; a transaction (a quarter rolled back on purpose); a read-dependent `INSERT …
//! SELECT` (its `v` is the hot row's value as the statement read it). Each as text (COM_QUERY)
//! or prepared (COM_STMT_EXECUTE). The client that writes on the primary directly is paced
//! (tests/chaos/pace.rs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An ERR packet: "code SQLSTATE".
    Error(String),
    /// The connection broke (or no answer within the deadline) before an answer.
    Unknown,
}

/// One operation as the client saw it.
#[derive(Clone, Debug)]
pub struct Op {
    pub table: &'static str,
    /// Rows inserted with unique keys.
    pub inserted: Vec<i64>,
    /// Hot row incremented by one.
    pub hot: Option<i64>,
    pub rolled_back_on_purpose: bool,
    /// Written on the primary directly, not through capgate.
    pub direct: bool,
    /// The shape and the protocol, for the summary and counter-examples.
    pub shape: &'static str,
    pub prepared: bool,
    pub outcome: Outcome,
    pub end: f64,
}

/// The outcome of a client call that ran under a deadline.
fn outcome<T>(r: Result<Result<T, mysql_async::Error>, tokio::time::error::Elapsed>) -> Outcome {
    match r {
        Ok(Ok(_)) => Outcome::Ok,
        Ok(Err(mysql_async::Error::Server(e))) => Outcome::Error(format!("{} {}", e.code, e.state)),
        Ok(Err(_)) | Err(_) => Outcome::Unknown,
    }
}

/// A statement as text or prepared (its `?` bound to `params`).
async fn run(c: &mut mysql_async::Conn, prepared: bool, sql: &str, params: Vec<mysql_async::Value>) -> Result<(), mysql_async::Error> {
    if prepared {
        c.exec_drop(sql, mysql_async::Params::Positional(params)).await
    } else {
        let mut text = String::new();
        let mut values = params.iter();
        for (i, part) in sql.split('?').enumerate() {
            if i > 0 {
                text.push_str(&values.next().map(|v| v.as_sql(false)).unwrap_or_default());
            }
            text.push_str(part);
        }
        c.query_drop(text).await
    }
}

/// One client at `url` (capgate's, or the primary's when `direct`): its own keys, the shared
/// hot rows of `tables`, both protocols, every shape; reconnects after a broken connection.
#[allow(clippy::too_many_arguments)]
pub async fn client(
    n: i64,
    url: String,
    direct: bool,
    tables: Vec<&'static str>,
    seed: u64,
    stop: Arc<AtomicBool>,
    t0: Instant,
    history: Arc<Mutex<Vec<Op>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (n as u64).wrapping_mul(0x9e37_79b9));
    let mut next = n * 1_000_000_000 + 100;
    let mut conn: Option<mysql_async::Conn> = None;
    let deadline = Duration::from_secs(20);
    let mut pace = super::pace::Pace::new(direct);
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            conn = match tokio::time::timeout(Duration::from_secs(5), mysql_async::Conn::from_url(url.as_str())).await {
                Ok(Ok(c)) => Some(c),
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
            };
            continue;
        };
        pace.wait().await;
        let table = tables[rng.random_range(0..tables.len())];
        let shape = rng.random_range(0..12);
        let prepared = rng.random_bool(0.5);
        let hot = rng.random_range(1..=2i64);
        let mut op = Op {
            table,
            inserted: Vec::new(),
            hot: None,
            rolled_back_on_purpose: false,
            direct,
            shape: "",
            prepared,
            outcome: Outcome::Unknown,
            end: 0.0,
        };
        let (a, b) = (next + 1, next + 2);
        next += 2;
        let insert = format!("INSERT INTO {table} (id, client) VALUES (?, ?)");
        let bump = format!("UPDATE {table} SET v = v + 1 WHERE id = ?");
        op.outcome = if shape < 4 {
            op.shape = "insert";
            op.inserted.push(a);
            outcome(tokio::time::timeout(deadline, run(c, prepared, &insert, vec![a.into(), n.into()])).await)
        } else if shape < 5 {
            op.shape = "multi-row insert";
            op.inserted = vec![a, b];
            let sql = format!("INSERT INTO {table} (id, client) VALUES (?, ?), (?, ?)");
            outcome(tokio::time::timeout(deadline, run(c, prepared, &sql, vec![a.into(), n.into(), b.into(), n.into()])).await)
        } else if shape < 6 {
            op.shape = "hot increment";
            op.hot = Some(hot);
            outcome(tokio::time::timeout(deadline, run(c, prepared, &bump, vec![hot.into()])).await)
        } else if shape < 7 {
            op.shape = "upsert increment";
            op.hot = Some(hot);
            let sql = format!("INSERT INTO {table} (id, client) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = v + 1");
            outcome(tokio::time::timeout(deadline, run(c, prepared, &sql, vec![hot.into(), n.into()])).await)
        } else if shape < 10 {
            op.shape = "transaction";
            op.inserted = vec![a, b];
            op.hot = Some(hot);
            op.rolled_back_on_purpose = rng.random_bool(0.25);
            let end = if op.rolled_back_on_purpose { "ROLLBACK" } else { "COMMIT" };
            let begin = if rng.random_bool(0.5) { "BEGIN" } else { "START TRANSACTION" };
            outcome(
                tokio::time::timeout(deadline, async {
                    c.query_drop(begin).await?;
                    run(c, prepared, &insert, vec![a.into(), n.into()]).await?;
                    run(c, prepared, &bump, vec![hot.into()]).await?;
                    run(c, prepared, &insert, vec![b.into(), n.into()]).await?;
                    c.query_drop(end).await
                })
                .await,
            )
        } else {
            // Read-dependent: the new row's value is the hot row's as this statement read it.
            op.shape = "read-dependent insert";
            op.inserted.push(a);
            let sql = format!("INSERT INTO {table} (id, client, v) SELECT ?, ?, v FROM {table} WHERE id = ?");
            outcome(tokio::time::timeout(deadline, run(c, prepared, &sql, vec![a.into(), n.into(), hot.into()])).await)
        };
        match op.outcome {
            // Leave the session clean for the next operation (an error inside a transaction
            // leaves it open in MySQL).
            Outcome::Error(_) => {
                if !matches!(tokio::time::timeout(deadline, c.query_drop("ROLLBACK")).await, Ok(Ok(()))) {
                    conn = None;
                }
            }
            Outcome::Unknown => conn = None,
            Outcome::Ok => {}
        }
        op.end = t0.elapsed().as_secs_f64();
        history.lock().unwrap().push(op);
    }
}
