//! `capgate demo --story`: the scenario of the essay capgate starts from, narrated and
//! checked. Writes to the four tables while both sites are up; the link cut (a silent
//! partition): the sync table refuses, the async table queues, the bounded table accepts
//! until its lag budget is spent and then refuses, the local table does not care; the link
//! healed: the queue drains and every table accepts again; `verify` finds both sites equal.
//!
//! Every outcome is checked against the databases themselves (site B read directly, not
//! through the link) and the run fails on the first one that differs. Waits are bounded
//! and report how long they took; nothing asserts a duration.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::{Demo, DATABASE};
use crate::admin::{status, AdminState, ReplicaDoc};
use crate::policy::Mode;
use crate::verify::{self, Limits, Selection, TableName};

/// The longest any one wait of the story may take before it counts as a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// A step that did not turn out as narrated.
#[derive(Debug)]
struct Failed(String);

type Step<T> = Result<T, Failed>;

fn failed(what: impl Into<String>) -> Failed {
    Failed(what.into())
}

/// Prints the story as it happens.
struct Narrator<'w> {
    out: &'w mut (dyn Write + Send),
    started: Instant,
}

impl Narrator<'_> {
    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn ok(&mut self, line: &str) {
        self.say(&format!("   ✓ {line}"));
    }

    /// A new part of the story, with the time since the start.
    fn part(&mut self, title: &str) {
        let at = self.started.elapsed().as_secs_f64();
        self.say(&format!("\n{title}  [{at:.1} s]"));
    }
}

async fn connect(url: &str) -> Step<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.map_err(|e| failed(format!("cannot connect to {url}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `SQLSTATE: message` of a failed statement.
fn describe(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => (String::new(), e.to_string()),
    }
}

async fn exec(client: &Client, sql: &str) -> Step<()> {
    client.batch_execute(sql).await.map_err(|e| {
        let (code, message) = describe(&e);
        failed(format!("`{sql}` failed: {code} {message}"))
    })
}

/// Run `sql` expecting a refusal with `code`; the refusal's message.
async fn refused(client: &Client, sql: &str, code: &str) -> Step<String> {
    match client.batch_execute(sql).await {
        Ok(()) => Err(failed(format!("`{sql}` was accepted; expected a refusal ({code})"))),
        Err(e) => {
            let (got, message) = describe(&e);
            if got == code {
                Ok(message)
            } else {
                Err(failed(format!("`{sql}` failed with {got} {message}; expected {code}")))
            }
        }
    }
}

async fn scalar(client: &Client, sql: &str) -> Step<String> {
    let rows = client.simple_query(sql).await.map_err(|e| failed(format!("`{sql}`: {}", describe(&e).1)))?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .ok_or_else(|| failed(format!("`{sql}` returned no row")))
}

/// Wait until `check` yields a value; how long it took.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Step<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Step<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok((v, start.elapsed()));
        }
        if start.elapsed() > PATIENCE {
            return Err(failed(format!("gave up waiting {PATIENCE:?} for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn replica(admin: &AdminState) -> Step<ReplicaDoc> {
    status::status(admin).replicas.into_iter().next().ok_or_else(|| failed("the demo has no replica"))
}

/// Wait until site B shows account 1's balance as `balance`. A sync transaction is prepared
/// on B before A commits; its COMMIT PREPARED follows right after A's COMMIT, off the
/// client's critical path, so B shows it a moment after COMMIT returned.
async fn visible_on_b(b: &Client, balance: &str) -> Step<Duration> {
    let (_, took) = wait_for(&format!("site B to show balance {balance}"), || async {
        Ok((scalar(b, "SELECT balance FROM accounts WHERE id = 1").await? == balance).then_some(()))
    })
    .await?;
    Ok(took)
}

/// A wait as a person reads it: milliseconds under a second, else seconds.
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Run the story against `demo` with capgate listening on `proxy`; true when every outcome
/// was as narrated.
pub async fn run(demo: &Demo, proxy: SocketAddr, admin: &AdminState, out: &mut (dyn Write + Send)) -> bool {
    let started = Instant::now();
    let mut n = Narrator { out, started };
    n.say("capgate demo --story: two sites, one policy with a table per mode, one partition.");
    match story(demo, proxy, admin, &mut n).await {
        Ok(()) => {
            n.say(&format!("\nEvery outcome was as described ({} in all).", secs(started.elapsed())));
            true
        }
        Err(Failed(why)) => {
            n.say(&format!("   ✗ {why}\n\nThe story did not go as described."));
            false
        }
    }
}

async fn story(demo: &Demo, proxy: SocketAddr, admin: &AdminState, n: &mut Narrator<'_>) -> Step<()> {
    let app = connect(&format!("postgres://postgres@{proxy}/{DATABASE}")).await?;
    let b = connect(&demo.b_url()).await?;
    let a = connect(&demo.a_url()).await?;

    n.part("0. Starting: capgate in front of site A, replicating to site B through a link we can cut.");
    let (_, took) = wait_for("replica b to be healthy and its shipper to measure the lag", || async {
        let r = replica(admin)?;
        Ok((r.state == "healthy" && r.lag_seconds.is_some()).then_some(()))
    })
    .await?;
    n.ok(&format!("replica b healthy and its shipper running after {}", secs(took)));

    n.part("1. Both sites up: every mode accepts writes.");
    exec(&app, "UPDATE accounts SET balance = balance - 10 WHERE id = 1").await?;
    let took = visible_on_b(&b, "90.00").await?;
    n.ok(&format!(
        "accounts (sync): UPDATE committed on A and B by two-phase commit (prepared on B before A committed; visible there {} later)",
        secs(took)
    ));
    exec(&app, "INSERT INTO cart_items VALUES (1, 'tea', 2)").await?;
    exec(&app, "INSERT INTO page_views (path) VALUES ('/'), ('/tea')").await?;
    exec(&app, "INSERT INTO sessions VALUES ('s1', 1, '{\"theme\": \"dark\"}')").await?;
    let (_, took) = wait_for("the cart item and page views to reach B", || async {
        let carts = scalar(&b, "SELECT count(*) FROM cart_items").await?;
        let views = scalar(&b, "SELECT count(*) FROM page_views").await?;
        Ok((carts == "1" && views == "2").then_some(()))
    })
    .await?;
    n.ok(&format!("cart_items (bounded) and page_views (async): accepted at once, on B {} later", secs(took)));
    if scalar(&b, "SELECT count(*) FROM sessions").await? != "0" {
        return Err(failed("sessions (local) reached site B"));
    }
    n.ok("sessions (local): written on A only, as intended");

    n.part("2. The link between the sites is cut (silently: packets vanish, connections hang).");
    demo.link.blackhole();
    let (_, took) =
        wait_for("capgate to notice the partition", || async { Ok((replica(admin)?.state == "partitioned").then_some(())) }).await?;
    n.ok(&format!("capgate saw replica b partitioned after {} (heartbeats, not TCP timeouts)", secs(took)));

    let message = refused(&app, "UPDATE accounts SET balance = balance - 10 WHERE id = 1", "55000").await?;
    n.ok(&format!("accounts (sync): refused at once: ERROR 55000 {message}"));
    let (on_a, on_b) =
        (scalar(&a, "SELECT balance FROM accounts WHERE id = 1").await?, scalar(&b, "SELECT balance FROM accounts WHERE id = 1").await?);
    if (on_a.as_str(), on_b.as_str()) != ("90.00", "90.00") {
        return Err(failed(format!("after the refusal the balance is {on_a} on A and {on_b} on B; expected 90.00 on both")));
    }
    n.ok("   …and nothing was written anywhere: 90.00 on A and on B");

    for i in 0..20 {
        exec(&app, &format!("INSERT INTO page_views (path) VALUES ('/during-partition/{i}')")).await?;
    }
    n.ok("page_views (async): 20 INSERTs accepted during the partition");
    exec(&app, "INSERT INTO sessions VALUES ('s2', 2, '{}')").await?;
    n.ok("sessions (local): unaffected");

    let mut accepted = 0;
    let (message, took) = wait_for("cart_items to be refused once its lag budget is spent", || {
        accepted += 1;
        let app = &app;
        let sku = accepted;
        async move {
            match app.batch_execute(&format!("INSERT INTO cart_items VALUES (2, 'sku-{sku}', 1)")).await {
                Ok(()) => {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Ok(None)
                }
                Err(e) => match describe(&e) {
                    (code, message) if code == "55000" => Ok(Some(message)),
                    (code, message) => Err(failed(format!("cart_items: unexpected error {code} {message}"))),
                },
            }
        }
    })
    .await?;
    let accepted = accepted - 1;
    if accepted == 0 {
        return Err(failed(format!(
            "cart_items (bounded) was refused at once ({message}); expected it to accept writes while the lag was under 5 s"
        )));
    }
    let lag = replica(admin)?.lag_seconds.unwrap_or(0.0);
    n.ok(&format!("cart_items (bounded, max_lag 5s): {accepted} INSERTs accepted while the lag was under budget"));
    n.ok(&format!("   …then refused, {} after the first (lag {lag:.1} s): ERROR 55000 {message}", secs(took)));

    // The figures are the shipper's last measurement: while a batch hangs on the cut link
    // they may be a few seconds old, but the lag keeps growing from the oldest pending commit.
    let ((pending, lag), _) = wait_for("the queue for B to show", || async {
        let r = replica(admin)?;
        Ok(r.pending_rows.zip(r.lag_seconds).filter(|(p, l)| *p >= 1 && *l > 0.0))
    })
    .await?;
    n.ok(&format!("page_views (async): queued for B, {pending} row(s) pending as last measured, lag {lag:.1} s and growing"));

    n.part("3. The link heals (connections that lived through the cut are reset, as a long outage leaves them).");
    demo.heal();
    let healed = Instant::now();
    let (_, took) = wait_for("replica b to be healthy again", || async { Ok((replica(admin)?.state == "healthy").then_some(())) }).await?;
    n.ok(&format!("replica b healthy again after {} (healing first: the link must prove itself)", secs(took)));
    let expected = scalar(&a, "SELECT count(*) FROM page_views").await?;
    wait_for("the queue to drain", || async {
        let views = scalar(&b, "SELECT count(*) FROM page_views").await?;
        Ok((views == expected && replica(admin)?.pending_rows == Some(0)).then_some(()))
    })
    .await?;
    n.ok(&format!("the queue drained {} after the heal: B has all {expected} page views, applied once each", secs(healed.elapsed())));
    exec(&app, "UPDATE accounts SET balance = balance - 10 WHERE id = 1").await?;
    visible_on_b(&b, "80.00").await?;
    n.ok("accounts (sync): accepted again, 80.00 on both sites");
    wait_for("cart_items to accept writes again", || async {
        match app.batch_execute("INSERT INTO cart_items VALUES (3, 'tea', 1) ON CONFLICT DO NOTHING").await {
            Ok(()) => Ok(Some(())),
            Err(e) if describe(&e).0 == "55000" => Ok(None),
            Err(e) => Err(failed(format!("cart_items after the heal: {}", describe(&e).1))),
        }
    })
    .await?;
    n.ok(&format!("cart_items (bounded): accepted again {} after the heal, once the lag was back under budget", secs(healed.elapsed())));
    wait_for("the last cart item to reach B", || async {
        Ok((scalar(&b, "SELECT count(*) FROM cart_items WHERE cart_id = 3").await? == "1").then_some(()))
    })
    .await?;

    n.part("4. capgate verify: are the sites equal?");
    let policy = crate::policy::Policy::load(&demo.dir().join("policy.toml")).map_err(|e| failed(e.to_string()))?;
    let replicated = move |t: &TableName| policy.decide_table(t).mode != Mode::Local;
    let report = verify::run(&demo.config, &Selection::Replicated(Box::new(replicated)), Limits::default())
        .await
        .map_err(|e| failed(format!("verify could not run: {e}")))?;
    let tables: Vec<String> = report.replicas.iter().flat_map(|r| r.tables.iter().map(|t| t.table.clone())).collect();
    if report.diverged || report.failed || tables.len() != 3 {
        return Err(failed(format!("verify did not find the three replicated tables equal:\n{}", report.render())));
    }
    n.ok(&format!("{} equal on A and B (sessions is local: not compared)", tables.join(", ")));
    Ok(())
}
