//! sysbench oltp_read_write through capgate with every table `sync` (prepared BEGIN and
//! COMMIT, 4 threads): every transaction commits (no refusal; sysbench retries the primary's
//! own deadlocks), and afterwards the replica's tables equal the primary's.

use std::process::{Command, Stdio};

use super::capture::SERVER;
use super::support::sysbench_figure;
use super::support::{primary, replica, MyProxy};
use super::sync::settled;

/// sysbench oltp_read_write `command` at `port`, required to succeed without a FATAL error
/// (the primary's latest deadlock is printed when it does not).
fn sysbench(port: u16, command: &str, extra: &[&str]) -> String {
    let (ok, text) = super::support::sysbench(port, "oltp_read_write", "sbsync", 1000, command, extra);
    if !ok || text.contains("FATAL") {
        let st = primary().sql("SHOW ENGINE INNODB STATUS").unwrap_or_default();
        let i = st.find("LATEST DETECTED DEADLOCK").unwrap_or(0);
        eprintln!("DEADLOCK {}", &st[i..(i + 5000).min(st.len())]);
    }
    assert!(ok && !text.contains("FATAL"), "sysbench {command} failed:\n{text}");
    text
}

/// Copy database `sbsync` from the primary to the replica (mariadb-dump, no triggers).
fn copy_to_replica() {
    replica().sql("DROP DATABASE IF EXISTS sbsync; CREATE DATABASE sbsync").expect("replica db");
    let mut dump = Command::new("mariadb-dump")
        .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-u", "capgate", "--skip-triggers"])
        .arg(format!("--port={}", primary().port()))
        .arg("sbsync")
        .stdout(Stdio::piped())
        .spawn()
        .expect("mariadb-dump");
    let load = Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-u", "capgate", "sbsync"])
        .arg(format!("--port={}", replica().port()))
        .stdin(dump.stdout.take().expect("dump output"))
        .output()
        .expect("mariadb load");
    assert!(dump.wait().expect("mariadb-dump").success(), "mariadb-dump failed");
    assert!(load.status.success(), "loading the dump: {}", String::from_utf8_lossy(&load.stderr));
}

fn checksums(server: &capgate::testbed::MariaDb) -> String {
    server.sql("CHECKSUM TABLE sbsync.sbtest1, sbsync.sbtest2 EXTENDED").expect("checksum")
}

#[tokio::test(flavor = "multi_thread")]
async fn sysbench_with_every_table_sync_leaves_both_sites_equal() {
    let _turn = SERVER.lock().await;
    primary().sql("DROP DATABASE IF EXISTS sbsync; CREATE DATABASE sbsync").expect("db");
    sysbench(primary().port(), "prepare", &[]);
    copy_to_replica();
    assert_eq!(checksums(primary()), checksums(replica()));

    let dir = crate::support::scratch("mysql-sync-sysbench");
    std::fs::write(dir.join("policy.toml"), "default = \"local\"\n[[table]]\nmatch = \"sbsync.*\"\nmode = \"sync\"\n").expect("policy");
    let text = format!(
        "site = \"west\"\nlisten = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n\
         [[replicas]]\nname = \"east\"\nurl = \"mysql://capgate@127.0.0.1:{}/?sslmode=disable\"\n",
        primary().port(),
        replica().port()
    );
    let proxy = MyProxy::start_config(&text, &dir);
    let report = sysbench(proxy.port(), "run", &["--threads=4", "--events=400", "--time=0", "--report-interval=0"]);
    assert!(sysbench_figure(&report, "transactions:") >= 400, "{report}");
    // A capgate refusal (1180) is not among the errors sysbench ignores, so it would have
    // been FATAL; "ignored errors" are the primary's own deadlocks between sysbench's
    // statements (1213), which sysbench retries and which happen without capgate too.
    settled().await;
    assert_eq!(checksums(primary()), checksums(replica()), "the sites differ after sysbench:\n{report}");
}
