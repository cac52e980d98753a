//! Applications as they are written, through capgate with every table they use replicated:
//! drivers of several languages (libpq's psql and pgbench, psycopg 3 + SQLAlchemy, node-postgres,
//! pgJDBC), every isolation level, and concurrent clients racing on the rows they read. Each
//! scenario runs once per replication mode on the shared two-site bed, ends with `capgate
//! verify` equal, and (for the drivers) prints exactly what it printed without replication.

mod drivers;
mod everyday;
mod isolation;
mod libpq;
mod races;

use std::net::SocketAddr;

use crate::async_mode::{drained, shipping};
use crate::replication::{bed, on_both, own_link, verify_equal_for};
use crate::support::{connect, scratch, Proxy};

use capgate::testbed::link::Link;

/// A replication mode the scenarios run under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Sync,
    Async,
    Bounded,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
            Mode::Bounded => "bounded",
        }
    }

    /// The policy rule that puts tables matching `pattern` in this mode.
    fn rule(self, pattern: &str) -> String {
        let extra = match self {
            Mode::Sync => "on_partition = \"fail\"\n",
            // A budget no healthy loopback run comes near: refusals would be a failure.
            Mode::Bounded => "max_lag = \"30s\"\non_partition = \"fail\"\n",
            Mode::Async => "",
        };
        format!("[[table]]\nmatch = \"{pattern}\"\nmode = \"{}\"\n{extra}", self.name())
    }
}

/// capgate at site A with the tables matching `pattern` in one mode, replicating to the bed's
/// replica through a link of its own.
pub(crate) struct Site {
    pub proxy: Proxy,
    /// The site name, new for every scenario and mode: a new origin, whose replica starts
    /// from a copy of its async tables (see [`fresh`]).
    pub name: String,
    admin: SocketAddr,
    mode: Mode,
    _link: Link,
}

impl Site {
    /// Start capgate for `scenario` in `mode` and wait until it replicates. The tables must
    /// exist on both sites first (capgate installs its capture triggers at start).
    pub(crate) async fn start(scenario: &str, mode: Mode, pattern: &str) -> Site {
        let name = format!("{scenario}_{}", mode.name());
        let policy = format!("default = \"local\"\n{}", mode.rule(pattern));
        let link = own_link();
        let proxy = site_proxy(&name, &policy, &link).await;
        let admin = proxy.admin.expect("admin listener");
        if mode != Mode::Sync {
            shipping(admin).await;
        }
        Site { proxy, name, admin, mode, _link: link }
    }

    pub(crate) fn url(&self) -> String {
        self.proxy.url("postgres", "postgres")
    }

    /// The port capgate listens on (for libpq tools given host and port).
    pub(crate) fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    /// Wait for the replica to apply everything (async, bounded), then `capgate verify`;
    /// then drop `tables` on both sites with the row changes still queued for them, so that
    /// no later test's new origin ships them (see [`fresh`]).
    pub(crate) async fn verify_equal(&self, tables: &[&str]) {
        if self.mode != Mode::Sync {
            drained(&self.name, self.admin).await;
        }
        verify_equal_for(&self.name, tables).await;
        let list = tables.join(", ");
        connect(&bed().a_primary_url())
            .await
            .execute("DELETE FROM capgate.changes WHERE tbl = ANY ($1)", &[&tables])
            .await
            .unwrap_or_else(|e| panic!("forgetting the changes of {list}: {e}"));
        on_both(&format!("DROP TABLE IF EXISTS {list} CASCADE")).await;
    }
}

/// capgate for site `site` with an admin listener, replicating to the bed's replica through
/// `link`. The replica's partition latency is 2 s: a sync COMMIT may take up to five times
/// that to apply and prepare on the replica, and a 100,000-row transaction on this 2-core
/// machine under load can take more than 2.5 s (the limit with 500 ms).
async fn site_proxy(site: &str, policy: &str, link: &Link) -> Proxy {
    capgate::store::postgres::primary::install_primary(&connect(&bed().a_primary_url()).await).await.unwrap();
    let dir = scratch(site);
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let text = format!(
        "site = \"{site}\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"{}\"\n\n[primary]\nurl = \"{}?sslmode=disable\"\n\n\
         [[replicas]]\nname = \"b\"\nurl = \"postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable&connect_timeout=2\"\n\
         heartbeat_interval = \"100ms\"\npartition_latency = \"2s\"\n",
        dir.join("policy.toml").display(),
        bed().a_primary_url(),
        link.addr().port(),
    );
    Proxy::start_config(&text, &dir)
}

/// `schema` on both sites of the bed (dropping what a previous run left), as a new
/// deployment of these tables: the queue of row changes on the primary is emptied too. Every
/// run is a new origin on the same primary and replica, which no real deployment does (one
/// primary is one site); a new origin ships only tables it took in (copied, or sync from the
/// snapshot their capture began in: decision 0014), so the emptied queue only keeps the
/// shared primary small.
pub(crate) async fn fresh(schema: &str) {
    connect(&bed().a_primary_url())
        .await
        .batch_execute("DO $$ BEGIN IF to_regclass('capgate.changes') IS NOT NULL THEN DELETE FROM capgate.changes; END IF; END $$")
        .await
        .unwrap();
    on_both(schema).await;
}

/// A database of its own on the shared test primary, nothing replicated: the reference run of
/// a scenario ("the same results as without replication"), with `schema` created in it.
pub(crate) fn reference_db(name: &str, schema: &str) -> String {
    let pg = crate::support::primary();
    let _ = pg.psql(&format!("DROP DATABASE IF EXISTS {name}"));
    pg.create_database(name).unwrap_or_else(|e| panic!("create {name}: {e}"));
    pg.psql_in(name, schema).unwrap_or_else(|e| panic!("schema of {name}: {e}"));
    pg.url("postgres", name)
}
