//! The operator's commands against real servers: `check-config --connect` (one line per
//! check, a replica that cannot PREPARE called misconfigured, not partitioned — in `/status`
//! too), `capgate status`, `capgate conflicts` (list, show, resolve) and `capgate explain`
//! with several statements.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use capgate::testbed::{PgOptions, PgServer};

use crate::support::{primary, psql_at, replica, scratch, Proxy};

fn capgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capgate")).args(args).output().expect("run capgate")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Database `db` with table `accounts` on the shared primary and replica.
fn database(db: &str) {
    for server in [primary(), replica()] {
        server.create_database(db).expect("create database");
        psql_at(&server.url("postgres", db), "CREATE TABLE accounts (id int PRIMARY KEY, balance int)");
    }
}

fn write_config(dir: &Path, text: &str, policy: &str) -> PathBuf {
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let file = dir.join("capgate.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn get_status(admin: std::net::SocketAddr) -> serde_json::Value {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /status HTTP/1.0\r\n\r\n").unwrap();
    let mut t = String::new();
    s.read_to_string(&mut t).unwrap();
    serde_json::from_str(t.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[test]
fn check_config_connect_tells_misconfigured_from_unreachable() {
    // It starts a server of its own: not while the replication tests run.
    let _one = crate::demo::one_at_a_time();
    database("ops_check");
    // A stock replica: no prepared transactions, and the table not created yet.
    let stock = PgServer::start(PgOptions { conf: vec![("max_prepared_transactions".into(), "0".into())], ..Default::default() })
        .expect("start the stock replica");
    stock.create_database("ops_check").unwrap();
    let dead = capgate::testbed::free_port();
    let dir = scratch("ops-check");
    let policy = "[[table]]\nmatch = \"public.accounts\"\nmode = \"sync\"\n[[table]]\nmatch = \"public.ledger\"\nmode = \"async\"\n";
    let replicas = format!(
        "[[replicas]]\nname = \"good\"\nurl = \"{}?sslmode=disable\"\n\
         [[replicas]]\nname = \"stock\"\nurl = \"{}?sslmode=disable\"\nheartbeat_interval = \"50ms\"\n\
         [[replicas]]\nname = \"gone\"\nurl = \"postgres://postgres@127.0.0.1:{dead}/ops_check?sslmode=disable&connect_timeout=1\"\n\
         [[replicas]]\nname = \"plain\"\nurl = \"{}\"\n",
        replica().url("postgres", "ops_check"),
        stock.url("postgres", "ops_check"),
        replica().url("postgres", "ops_check"),
    );
    let top = format!(
        "site = \"ops_check\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"{}?sslmode=disable\"\n",
        primary().url("postgres", "ops_check")
    );
    let file = write_config(&dir, &format!("{top}{replicas}"), policy);
    let out = capgate(&["check-config", "--connect", "--config", file.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for line in [
        "[ok] primary: connected to 127.0.0.1:",
        "[ok] primary: 1 table(s) the policy replicates: public.accounts",
        "[warn] primary: policy rule \"public.ledger\" (line 4) names public.ledger, which does not exist here yet",
        "[ok] replica good: max_prepared_transactions = 100",
        "[ok] replica good: 1 of 1 replicated table(s) present and writable",
        "[FAIL] replica stock: max_prepared_transactions = 0: sync tables cannot commit here",
        "[FAIL] replica stock: replicated table public.accounts is missing",
        "[FAIL] replica gone: cannot connect to 127.0.0.1:",
        // No sslmode in the URL: the between-sites default, and a message that says so.
        "[FAIL] replica plain: cannot connect to 127.0.0.1:",
        "the replica URL gives no sslmode, and links between sites default to sslmode=verify-full",
        "4 check(s) failed",
    ] {
        assert!(all.contains(line), "missing `{line}` in:\n{all}");
    }

    // The same stock replica behind a running capgate: healthy link, but /status says it is
    // misconfigured.
    let proxy = Proxy::start_config(&format!("{top}{}", replicas.split("[[replicas]]\nname = \"gone\"").next().unwrap()), &dir);
    let admin = proxy.admin.expect("admin");
    let deadline = Instant::now() + Duration::from_secs(60);
    let stock_status = loop {
        let s = get_status(admin);
        let r = s["replicas"][1].clone();
        if r["state"] == "healthy" && !r["problems"].as_array().unwrap().is_empty() {
            break r;
        }
        assert!(Instant::now() < deadline, "the stock replica's problem never showed: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stock_status["problems"][0].as_str().unwrap().contains("max_prepared_transactions = 0"), "{stock_status}");

    // Fixed: only the good replica, and every check passes.
    let top_good = top.clone();
    let good = write_config(&dir, &format!("{top_good}{}", replicas.split("[[replicas]]\nname = \"stock\"").next().unwrap()), policy);
    let out = capgate(&["check-config", "--connect", "--config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn status_prints_the_running_capgate_as_a_table() {
    database("ops_status");
    let dir = scratch("ops-status");
    let text_config = format!(
        "site = \"ops_status\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"{}?sslmode=disable\"\n\
         [[replicas]]\nname = \"b\"\nurl = \"{}?sslmode=disable\"\nheartbeat_interval = \"50ms\"\n",
        primary().url("postgres", "ops_status"),
        replica().url("postgres", "ops_status"),
    );
    write_config(&dir, &text_config, "[[table]]\nmatch = \"public.accounts\"\nmode = \"sync\"\n");
    let proxy = Proxy::start_config(&text_config, &dir);
    let url = format!("http://{}", proxy.admin.expect("admin"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let out = capgate(&["status", "--url", &url]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        if shown.contains(" healthy ") && shown.contains(" up (") {
            break shown;
        }
        assert!(Instant::now() < deadline, "never healthy:\n{shown}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(shown.starts_with("site ops_status · primary 127.0.0.1:"), "{shown}");
    assert!(shown.contains("replica  state    for"), "{shown}");
    assert!(shown.contains("public.accounts  sync"), "{shown}");
    let out = capgate(&["status", "--url", &url, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints /status");
    assert_eq!(json["site"], "ops_status");
    let out = capgate(&["status", "--url", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("cannot reach capgate's admin listener at 127.0.0.1:1"), "{}", text(&out));
}

#[tokio::test]
async fn conflicts_are_listed_shown_and_resolved() {
    database("ops_conflicts");
    let dir = scratch("ops-conflicts");
    let config_text = format!(
        "site = \"ops_conflicts\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\npolicy = \"policy.toml\"\n[primary]\nurl = \"{}?sslmode=disable\"\n\
         [[replicas]]\nname = \"b\"\nurl = \"{}?sslmode=disable\"\nheartbeat_interval = \"50ms\"\n",
        primary().url("postgres", "ops_conflicts"),
        replica().url("postgres", "ops_conflicts"),
    );
    let file = write_config(&dir, &config_text, "[[table]]\nmatch = \"public.accounts\"\nmode = \"async\"\non_conflict = \"skip\"\n");
    let proxy = Proxy::start_config(&config_text, &dir);
    let admin = proxy.admin.expect("admin");
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::task::spawn_blocking(move || get_status(admin)).await.unwrap()["replicas"][0]["shipping"] != "running" {
        assert!(Instant::now() < deadline, "the shipper never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The replica already has row 7, written around capgate: shipping the primary's row 7
    // is a conflict, recorded and skipped.
    psql_at(&replica().url("postgres", "ops_conflicts"), "INSERT INTO accounts VALUES (7, 1)");
    let client = crate::support::connect(&proxy.url("postgres", "ops_conflicts")).await;
    client.batch_execute("INSERT INTO accounts VALUES (7, 100)").await.unwrap();
    let file = file.to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let f = file.clone();
        let out = tokio::task::spawn_blocking(move || capgate(&["conflicts", "--config", &f])).await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if !listed.contains("no conflicts recorded") {
            break listed;
        }
        assert!(Instant::now() < deadline, "the conflict was never recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(listed.starts_with("b        #"), "{listed}");
    assert!(listed.contains("public.accounts") && listed.contains("skip"), "{listed}");
    let id: String = listed.split('#').nth(1).unwrap().chars().take_while(char::is_ascii_digit).collect();

    let f = file.clone();
    let i = id.clone();
    let shown = tokio::task::spawn_blocking(move || capgate(&["conflicts", "--config", &f, "--replica", "b", "show", &i])).await.unwrap();
    let shown_text = text(&shown);
    assert_eq!(shown.status.code(), Some(0), "{shown_text}");
    assert!(shown_text.starts_with(&format!("conflict #{id} on replica b\n")), "{shown_text}");
    assert!(shown_text.contains("origin       ops_conflicts"), "{shown_text}");

    let f = file.clone();
    let i = id.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        capgate(&["conflicts", "--config", &f, "resolve", &i, "--replica", "b", "--note", "kept B's row"])
    })
    .await
    .unwrap();
    assert_eq!(resolved.status.code(), Some(0), "{}", text(&resolved));
    let f = file.clone();
    let open = tokio::task::spawn_blocking(move || capgate(&["conflicts", "--config", &f, "--unresolved"])).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&open.stdout), "no conflicts recorded\n");
    let f = file.clone();
    let json = tokio::task::spawn_blocking(move || capgate(&["conflicts", "--config", &f, "--json"])).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(v["conflicts"][0]["record"]["resolved_note"], "kept B's row", "{v}");

    let f = file.clone();
    let missing = tokio::task::spawn_blocking(move || capgate(&["conflicts", "--config", &f, "show", "1"])).await.unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("--replica NAME is required"), "{}", text(&missing));
}

#[test]
fn explain_takes_several_statements_as_arguments_and_from_a_file() {
    let dir = scratch("ops-explain");
    std::fs::write(dir.join("policy.toml"), "[[table]]\nmatch = \"public.orders\"\nmode = \"sync\"\n").unwrap();
    let policy = dir.join("policy.toml");
    let out = capgate(&[
        "explain",
        "--policy",
        policy.to_str().unwrap(),
        "--json",
        "INSERT INTO orders VALUES (1); SELECT 1",
        "UPDATE carts SET n = 2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = v["statements"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["write", "read", "write"]);
    assert_eq!(v["statements"][0]["decisions"][0]["mode"], "sync");
    assert_eq!(v["statements"][2]["decisions"][0]["mode"], "local");

    let mut child = Command::new(env!("CARGO_BIN_EXE_capgate"))
        .args(["explain", "--policy", policy.to_str().unwrap(), "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"DELETE FROM orders WHERE id = 1;\nSELECT * FROM orders;\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("statement 1: write") && shown.contains("statement 2: read"), "{shown}");
    assert!(shown.contains("public.orders -> sync (rule \"public.orders\", line 1)"), "{shown}");
}
