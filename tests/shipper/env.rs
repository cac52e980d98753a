//! The shared bed and one test's world: its own database on both sites (so every test has its
//! own `capgate.changes`, applied snapshot and table states), its own link to the replica.

use super::*;

pub const PATIENCE: Duration = Duration::from_secs(90);

pub fn bed() -> &'static TwoSites {
    static SITES: OnceLock<TwoSites> = OnceLock::new();
    SITES.get_or_init(|| TwoSites::start().unwrap_or_else(|e| panic!("two-site bed: {e}")))
}

pub struct Env {
    pub db: String,
    pub link: Link,
    pub primary: Client,
    pub replica: Client,
}

pub async fn client(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    tokio::spawn(conn);
    client
}

pub fn upstream(url: &str) -> Upstream {
    let url = DbUrl::parse(&format!("{url}?sslmode=disable&connect_timeout=2"), Path::new("/")).expect("url");
    Upstream::new(url).expect("upstream")
}

/// Database `db` on both sites with `ddl` run on each, the primary's capgate schema installed
/// and every table named in `captured` captured as async.
pub async fn env(db: &str, ddl: &str, captured: &[&str]) -> Env {
    let bed = bed();
    for server in [bed.a_primary(), bed.b_replica()] {
        server.create_database(db).unwrap_or_else(|e| panic!("{db}: {e}"));
    }
    let link = Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, bed.b_replica().port()))).expect("link");
    let primary = client(&bed.a_primary().url("postgres", db)).await;
    let replica = client(&bed.b_replica().url("postgres", db)).await;
    primary.batch_execute(ddl).await.unwrap_or_else(|e| panic!("primary ddl: {e}"));
    replica.batch_execute(ddl).await.unwrap_or_else(|e| panic!("replica ddl: {e}"));
    install_primary(&primary).await.expect("install primary");
    let env = Env { db: db.to_owned(), link, primary, replica };
    for table in captured {
        env.capture(table).await;
    }
    env
}

impl Env {
    /// Installs the async capture trigger on `table` (`public.t`).
    pub async fn capture(&self, table: &str) {
        let sql = "SELECT capgate.install_capture($1::text::regclass, 'async', $1)";
        self.primary.execute(sql, &[&table]).await.unwrap_or_else(|e| panic!("capture {table}: {e}"));
    }

    /// A shipper configuration to the replica's database `replica_db` (default: the test's
    /// own) through the link, with short timings.
    pub fn config_to(&self, replica_name: &str, replica_db: &str) -> ShipperConfig {
        let bed = bed();
        let addr = self.link.addr();
        let replica = upstream(&format!("postgres://postgres@{}:{}/{replica_db}", addr.ip(), addr.port()));
        let mut c = ShipperConfig::new("a", replica_name, upstream(&bed.a_primary().url("postgres", &self.db)), replica);
        c.poll_interval = Duration::from_millis(20);
        c.lock_poll = Duration::from_millis(100);
        c.deadline = Duration::from_secs(10);
        c.backoff_min = Duration::from_millis(50);
        c.backoff_max = Duration::from_millis(500);
        c
    }

    pub fn config(&self) -> ShipperConfig {
        self.config_to("b", &self.db)
    }

    /// `row_to_json` of every row of `table`, ordered by key, as text.
    pub async fn rows(c: &Client, table: &str) -> Vec<String> {
        let sql = format!("SELECT row_to_json(t)::text FROM {table} t ORDER BY 1");
        c.query(&sql, &[]).await.unwrap_or_else(|e| panic!("{table}: {e}")).iter().map(|r| r.get(0)).collect()
    }

    /// Waits until `table` is the same on the replica `other` (default: the test's replica)
    /// as on the primary, and nothing is pending for replica `name`.
    pub async fn converged(&self, other: Option<&Client>, table: &str, shipper: &Shipper) {
        let replica = other.unwrap_or(&self.replica);
        let t = Instant::now();
        loop {
            let (p, r) = (Env::rows(&self.primary, table).await, Env::rows(replica, table).await);
            if p == r {
                return;
            }
            let stats = shipper.stats();
            assert!(
                t.elapsed() < PATIENCE,
                "{table}: {} rows on the primary, {} on the replica; shipper {:?} {:?} last error {:?} tables {:?}",
                p.len(),
                r.len(),
                stats.phase(),
                stats.applied_snapshot(),
                stats.last_error(),
                stats.tables()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn conflicts(&self) -> Vec<(String, String, String)> {
        let sql = "SELECT tbl, kind, resolution FROM capgate.conflicts ORDER BY id";
        self.replica.query(sql, &[]).await.expect("conflicts").iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
    }
}

pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Env {
    /// `capgate verify` (the module) on `tables` between the primary and the test's replica:
    /// waits for the replica to apply what the primary committed, then compares by checksum.
    /// Panics, with the report, unless every table is identical.
    pub async fn verify(&self, tables: &[&str]) {
        use capgate::verify::{self, Limits, Selection, TableName};
        let text = format!(
            "site = \"a\"\n[primary]\nurl = \"{}?sslmode=disable\"\n[[replicas]]\nname = \"b\"\nurl = \"{}?sslmode=disable\"\n",
            bed().a_primary().url("postgres", &self.db),
            bed().b_replica().url("postgres", &self.db)
        );
        let config = capgate::config::Config::parse(&text, Path::new("/tmp/capgate-shipper-verify.toml")).expect("config");
        let names = tables.iter().map(|t| TableName::parse(t).expect("table name")).collect();
        let report = verify::run(&config, &Selection::Named(names), Limits::default()).await.expect("verify ran");
        assert!(!report.diverged && !report.failed, "verify: {}", serde_json::to_string_pretty(&report).unwrap_or_default());
        let point = &report.replicas[0].consistent_point;
        assert!(point.starts_with("after the replica applied every change"), "{point}");
    }
}
