//! Sync-mode recovery against a real primary and replica: prepared transactions of this
//! site are committed when the primary holds their decision, rolled back when undecided and
//! older than the grace, left otherwise; other sites' are never touched. Also the primary
//! schema's versioned install.
//!
//! Each test uses its own site name and table, so they run in parallel on one bed.

use std::sync::OnceLock;
use std::time::Duration;

use capgate::replicate::recovery::{prune_decisions, recover, RecoveryReport};
use capgate::store::postgres::primary as schema;
use capgate::testbed::sites::TwoSites;
use tokio_postgres::{Client, NoTls};

fn bed() -> &'static TwoSites {
    static SITES: OnceLock<TwoSites> = OnceLock::new();
    SITES.get_or_init(|| TwoSites::start().unwrap_or_else(|e| panic!("two-site bed: {e}")))
}

async fn client(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    tokio::spawn(conn);
    client
}

/// Prepares `INSERT INTO table VALUES (k)` on `replica` as `gid`.
async fn prepare(replica: &Client, table: &str, k: i32, gid: &str) {
    let gid_literal = format!("'{}'", gid.replace('\'', "''"));
    replica
        .batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES ({k}); PREPARE TRANSACTION {gid_literal}"))
        .await
        .unwrap_or_else(|e| panic!("prepare {gid}: {e}"));
}

async fn prepared(replica: &Client, like: &str) -> Vec<String> {
    let rows =
        replica.query("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE $1 ORDER BY gid", &[&like]).await.expect("pg_prepared_xacts");
    rows.into_iter().map(|r| r.get(0)).collect()
}

async fn keys(c: &Client, table: &str) -> Vec<i32> {
    let rows = c.query(&format!("SELECT k FROM {table} ORDER BY k"), &[]).await.expect("keys");
    rows.into_iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn prepared_transactions_are_committed_rolled_back_or_left() {
    let bed = bed();
    let primary = client(&bed.a_primary_url()).await;
    let replica = client(&bed.b_replica_url_direct()).await;
    schema::install_primary(&primary).await.expect("install primary");
    let table = "public.recovery_resolve";
    replica.batch_execute(&format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (k int PRIMARY KEY)")).await.expect("table");

    // Undecided and old: presumed aborted.
    let old = "capgate:rec:aaaa:1";
    prepare(&replica, table, 1, old).await;
    // Decided (a quote in the gid: the literal must be safe).
    let decided = "capgate:rec:it's:2";
    prepare(&replica, table, 2, decided).await;
    primary.execute("INSERT INTO capgate.decisions (gid, origin) VALUES ($1, 'rec')", &[&decided]).await.expect("decision");
    // Another site whose name starts like this one's: never touched.
    let other = "capgate:recx:aaaa:3";
    prepare(&replica, table, 3, other).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // Undecided but young: its coordinator may still be deciding.
    let young = "capgate:rec:bbbb:4";
    prepare(&replica, table, 4, young).await;

    let report = recover(&primary, &replica, "rec", Duration::from_secs(2)).await.expect("recover");
    assert_eq!(
        report,
        RecoveryReport {
            committed: vec![decided.to_owned()],
            rolled_back: vec![old.to_owned()],
            left: vec![young.to_owned()],
            gone: vec![],
        }
    );
    assert!(report.acted());
    assert_eq!(keys(&replica, table).await, vec![2], "only the decided transaction committed");
    assert_eq!(prepared(&replica, "capgate:rec%").await, vec![young.to_owned(), other.to_owned()]);

    // A second round finds nothing new to do.
    let again = recover(&primary, &replica, "rec", Duration::from_secs(2)).await.expect("recover again");
    assert!(!again.acted());
    assert_eq!(again.left, vec![young.to_owned()]);

    // Pruning: an old decision whose transaction is prepared nowhere goes; one still
    // prepared somewhere stays, and so does a recent one.
    primary
        .batch_execute(
            "INSERT INTO capgate.decisions (gid, origin, decided_at) VALUES \
             ('capgate:rec:cccc:5', 'rec', now() - interval '2 hours'), \
             ('capgate:rec:bbbb:4', 'rec', now() - interval '2 hours'), \
             ('capgate:recx:cccc:6', 'recx', now() - interval '2 hours')",
        )
        .await
        .expect("old decisions");
    let pruned = prune_decisions(&primary, "rec", &again.left, Duration::from_secs(3600)).await.expect("prune");
    assert_eq!(pruned, 1);
    let rows = primary.query("SELECT gid FROM capgate.decisions WHERE gid LIKE 'capgate:rec%' ORDER BY gid", &[]).await.expect("decisions");
    let left: Vec<String> = rows.into_iter().map(|r| r.get(0)).collect();
    // The rolled-back one keeps its abort record (the fence) until it is old too.
    assert_eq!(left, vec![old, "capgate:rec:bbbb:4", decided, "capgate:recx:cccc:6"]);
    let aborted: bool =
        primary.query_one("SELECT NOT committed FROM capgate.decisions WHERE gid = $1", &[&old]).await.expect("abort").get(0);
    assert!(aborted, "recovery recorded the abort before rolling back");

    // The young one, now decided, commits on the next round, whatever its age.
    let third = recover(&primary, &replica, "rec", Duration::from_secs(3600)).await.expect("recover third");
    assert_eq!(third.committed, vec![young.to_owned()]);
    assert_eq!(keys(&replica, table).await, vec![2, 4]);
    replica.batch_execute(&format!("ROLLBACK PREPARED '{other}'")).await.expect("cleanup");
}

#[tokio::test]
async fn nothing_prepared_is_a_quiet_round() {
    let bed = bed();
    let primary = client(&bed.a_primary_url()).await;
    let replica = client(&bed.b_replica_url_direct()).await;
    schema::install_primary(&primary).await.expect("install primary");
    let report = recover(&primary, &replica, "quiet", Duration::ZERO).await.expect("recover");
    assert_eq!(report, RecoveryReport::default());
}

#[tokio::test]
async fn the_primary_schema_is_versioned_and_migrates_an_unversioned_install() {
    let bed = bed();
    bed.a_primary().create_database("recovery_migrate").expect("database");
    let url = bed.a_primary().url("postgres", "recovery_migrate");
    let primary = client(&url).await;
    assert_eq!(schema::primary_schema_version(&primary).await.expect("version"), 0);
    schema::install_primary(&primary).await.expect("install");
    assert_eq!(schema::primary_schema_version(&primary).await.expect("version"), schema::PRIMARY_SCHEMA_VERSION);
    const { assert!(schema::PRIMARY_SCHEMA_VERSION >= 4) };

    // Queued changes, then the versions lost (as before versions were recorded): the
    // migration runs every step again and keeps what is queued.
    primary
        .batch_execute(
            "INSERT INTO capgate.changes (tbl, op, new, proxied) VALUES ('public.t', 'I', '{\"id\": 41}', false); \
             DROP TABLE capgate.decisions; DROP TABLE capgate.schema_version",
        )
        .await
        .expect("downgrade");
    schema::install_primary(&primary).await.expect("migrate");
    schema::install_primary(&primary).await.expect("idempotent");
    assert_eq!(schema::primary_schema_version(&primary).await.expect("version"), schema::PRIMARY_SCHEMA_VERSION);
    let queued: i64 = primary.query_one("SELECT count(*) FROM capgate.changes", &[]).await.expect("changes").get(0);
    assert_eq!(queued, 1, "queued changes survive the migration");
    let outbox: bool = primary.query_one("SELECT to_regclass('capgate.outbox') IS NOT NULL", &[]).await.expect("outbox").get(0);
    assert!(!outbox, "the statement outbox of the first core is gone");
    primary.execute("INSERT INTO capgate.decisions (gid, origin) VALUES ('g', 'o')", &[]).await.expect("decisions exists again");

    // A newer capgate's schema is left alone.
    primary.batch_execute("UPDATE capgate.schema_version SET version = 99").await.expect("newer");
    schema::install_primary(&primary).await.expect("install over newer");
    assert_eq!(schema::primary_schema_version(&primary).await.expect("version"), 99);

    // A failed install leaves the connection usable.
    assert!(primary.batch_execute("SELECT 1").await.is_ok());
}

/// The fence of presumed abort (decision 0009): recovery records the abort under the gid
/// before rolling a branch back, waiting for a coordinator whose transaction still holds the
/// gid. A late primary COMMIT and a recovery rollback can never both happen.
#[tokio::test]
async fn recovery_never_rolls_back_a_branch_whose_coordinator_may_still_commit() {
    let bed = bed();
    let primary = client(&bed.a_primary_url()).await;
    let replica = client(&bed.b_replica_url_direct()).await;
    schema::install_primary(&primary).await.expect("install primary");
    let table = "public.recovery_fence";
    replica.batch_execute(&format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (k int PRIMARY KEY)")).await.expect("table");

    // A coordinator between its decision record (uncommitted) and its primary COMMIT.
    let coordinator = client(&bed.a_primary_url()).await;
    let gid = "capgate:fence:aaaa:1";
    coordinator.batch_execute(&format!("BEGIN; INSERT INTO capgate.decisions (gid, origin) VALUES ('{gid}', 'fence')")).await.unwrap();
    prepare(&replica, table, 1, gid).await;
    // Old enough for presumed abort, but the coordinator holds the gid: left alone.
    let round = recover(&primary, &replica, "fence", Duration::ZERO).await.expect("recover");
    assert_eq!(round.left, vec![gid.to_owned()], "{round:?}");
    assert_eq!(prepared(&replica, "capgate:fence:%").await, vec![gid.to_owned()]);
    // The coordinator commits after all: recovery commits the branch.
    coordinator.batch_execute("COMMIT").await.unwrap();
    let round = recover(&primary, &replica, "fence", Duration::ZERO).await.expect("recover");
    assert_eq!(round.committed, vec![gid.to_owned()]);
    assert_eq!(keys(&replica, table).await, vec![1]);

    // A coordinator that has not written its decision yet when recovery fences the gid: its
    // own insert then fails, so its transaction can never commit.
    let late = "capgate:fence:aaaa:2";
    prepare(&replica, table, 2, late).await;
    let round = recover(&primary, &replica, "fence", Duration::ZERO).await.expect("recover");
    assert_eq!(round.rolled_back, vec![late.to_owned()]);
    let e = coordinator
        .batch_execute(&format!("BEGIN; INSERT INTO capgate.decisions (gid, origin) VALUES ('{late}', 'fence')"))
        .await
        .expect_err("the fenced gid can no longer be decided");
    assert_eq!(e.code().map(|c| c.code()), Some("23505"), "{e}");
    coordinator.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(keys(&replica, table).await, vec![1]);
}

/// A branch capgate gave up on is watched, and rolled back if its PREPARE lands late; the
/// watch looks before it acts, so the replica's log gets no error for each look meanwhile.
#[tokio::test]
async fn a_late_branch_is_rolled_back_without_filling_the_replica_log() {
    use capgate::backend::postgres::Upstream;
    use capgate::config::DbUrl;
    use capgate::sites::postgres::PgConnector;
    use capgate::sites::{Settings, Site, Thresholds};
    let bed = bed();
    let replica = client(&bed.b_replica_url_direct()).await;
    let table = "public.recovery_late";
    replica.batch_execute(&format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (k int PRIMARY KEY)")).await.expect("table");
    let url = DbUrl::parse(&format!("{}?sslmode=disable", bed.b_replica_url_direct()), std::path::Path::new("/")).expect("url");
    let settings = Settings {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        thresholds: Thresholds { partition_latency: Duration::from_secs(2), partition_after: 3, heal_after: 2 },
        pool_size: 2,
    };
    let site = Site::start("b", PgConnector::new(Upstream::new(url).expect("upstream")), settings);
    let gid = "capgate:late:bbbb:1";
    let watch =
        tokio::spawn(capgate::store::postgres::twophase::finish(site.pool().clone(), gid.to_owned(), false, Duration::from_secs(20)));
    // The PREPARE lands while the watch is looking.
    tokio::time::sleep(Duration::from_millis(700)).await;
    prepare(&replica, table, 1, gid).await;
    tokio::time::timeout(Duration::from_secs(30), watch).await.expect("the watch ends").expect("join");
    assert!(prepared(&replica, gid).await.is_empty(), "the late branch is still prepared");
    assert!(keys(&replica, table).await.is_empty(), "the late branch committed");
    let log = std::fs::read_to_string(bed.b_replica().data_dir().with_file_name("postgres.log")).expect("replica log");
    let noise: Vec<&str> = log.lines().filter(|l| l.contains(gid) && l.contains("does not exist")).collect();
    assert!(noise.is_empty(), "the watch filled the replica log with errors: {noise:?}");
}
