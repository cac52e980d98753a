//! The shared bed and one test's world (origin, table, link, clients).

use super::*;

pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn bed() -> &'static TwoSites {
    static SITES: OnceLock<TwoSites> = OnceLock::new();
    SITES.get_or_init(|| TwoSites::start().unwrap_or_else(|e| panic!("two-site bed: {e}")))
}

/// One test's world: its origin name, its own link to the replica, direct clients to both.
pub struct Env {
    pub origin: String,
    pub table: String,
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

/// A fresh origin `name` with table `public.<name>(k int primary key, v text)` on both sides.
pub async fn env(name: &str) -> Env {
    let bed = bed();
    let link = Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, bed.b_replica().port()))).expect("link");
    let primary = client(&bed.a_primary_url()).await;
    let replica = client(&bed.b_replica_url_direct()).await;
    schema::install_primary(&primary).await.expect("install primary");
    schema::install_replica(&replica).await.expect("install replica");
    let table = format!("public.{name}");
    for c in [&primary, &replica] {
        c.batch_execute(&format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (k int PRIMARY KEY, v text)")).await.expect("table");
    }
    Env { origin: name.to_owned(), table, link, primary, replica }
}

impl Env {
    pub fn config(&self, replica_name: &str) -> ShipperConfig {
        let bed = bed();
        let addr = self.link.addr();
        let replica = upstream(&format!("postgres://postgres@{}:{}/postgres", addr.ip(), addr.port()));
        let mut c = ShipperConfig::new(&self.origin, replica_name, upstream(&bed.a_primary_url()), replica);
        c.poll_interval = Duration::from_millis(20);
        c.lock_poll = Duration::from_millis(100);
        c.deadline = Duration::from_secs(5);
        c.backoff_min = Duration::from_millis(50);
        c.backoff_max = Duration::from_millis(500);
        c.lag_interval = Duration::from_millis(50);
        c
    }

    pub fn capture(&self, statement: &str, params: &[Option<&str>], row_count: u64) -> Capture {
        Capture {
            origin: self.origin.clone(),
            statement: statement.to_owned(),
            params: params
                .iter()
                .map(|p| Param { type_oid: 25, format: ParamFormat::Text, value: p.map(|s| s.as_bytes().to_vec()) })
                .collect(),
            settings: vec![("search_path".into(), "public".into())],
            tables: vec![self.table.clone()],
            row_count: Some(row_count),
        }
    }

    /// `INSERT (k, v)` on the primary with its capture, in one committed transaction.
    pub async fn insert(&self, k: i32, v: &str) {
        let data = format!("INSERT INTO {} VALUES ({k}, '{v}')", self.table);
        let stmt = format!("INSERT INTO {} (k, v) VALUES (CAST($1 AS int), $2)", self.table);
        let c = self.capture(&stmt, &[Some(&k.to_string()), Some(v)], 1);
        capture::commit_captured(&self.primary, &data, &[c]).await.expect("captured insert");
    }

    /// The highest committed seq of this origin.
    pub async fn last_seq(&self) -> i64 {
        let row = self.primary.query_one("SELECT coalesce(max(seq), 0) FROM capgate.outbox WHERE origin = $1", &[&self.origin]).await;
        row.expect("max seq").get(0)
    }

    pub async fn outbox_rows(&self) -> i64 {
        let sql = "SELECT count(*) FROM capgate.outbox WHERE origin = $1";
        self.primary.query_one(sql, &[&self.origin]).await.expect("count").get(0)
    }

    pub async fn watermark(&self) -> i64 {
        let row = self.replica.query_opt("SELECT seq FROM capgate.applied WHERE origin = $1", &[&self.origin]).await;
        row.expect("watermark").map_or(0, |r| r.get(0))
    }

    pub async fn count(&self, c: &Client) -> i64 {
        c.query_one(&format!("SELECT count(*) FROM {}", self.table), &[]).await.expect("count").get(0)
    }

    pub async fn conflicts(&self) -> Vec<tokio_postgres::Row> {
        let sql =
            "SELECT seq, expected_rows, actual_rows, sqlstate, resolution, statement FROM capgate.conflicts WHERE origin = $1 ORDER BY id";
        self.replica.query(sql, &[&self.origin]).await.expect("conflicts")
    }

    /// Waits until the replica's watermark reaches the primary's last seq.
    pub async fn caught_up(&self, shipper: &Shipper) {
        let target = self.last_seq().await;
        let t = Instant::now();
        while self.watermark().await < target {
            let stats = shipper.stats();
            assert!(t.elapsed() < PATIENCE, "replica stuck at {} < {target}: {stats:?}", self.watermark().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The shipper counts a batch just after its commit.
        until("the shipper's count", || shipper.stats().applied_seq.load(Ordering::Relaxed) >= target).await;
    }
}

pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
