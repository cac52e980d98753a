//! The dashboard in a real browser (Debian's headless Chromium) against a running two-site
//! bed (`capgate demo`, driven through its standard input): it shows the replica healthy,
//! then — once the link is cut — partitioned, with a lag that grows between two loads.
//! A screenshot is kept in target/test-artifacts/dashboard.png.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `capgate demo` running as a child, stopped (and its servers removed) on drop.
struct DemoProcess {
    child: Child,
    dashboard: String,
    dsn: String,
}

impl DemoProcess {
    fn start() -> DemoProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_capgate"))
            .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start capgate demo");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut dashboard, mut dsn) = (None, None);
        while dashboard.is_none() || dsn.is_none() {
            let line = lines.next().expect("capgate demo ended before printing its addresses").expect("read");
            let last = line.split_whitespace().last().unwrap_or_default().to_owned();
            if line.trim_start().starts_with("dashboard") {
                dashboard = Some(last);
            } else if line.trim_start().starts_with("connect (site A") {
                dsn = Some(last);
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        DemoProcess { child, dashboard: dashboard.unwrap_or_default(), dsn: dsn.unwrap_or_default() }
    }

    fn command(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("send a command to the demo");
    }

    /// The admin listener's `/status`, parsed.
    fn status(&self) -> serde_json::Value {
        let addr = self.dashboard.trim_start_matches("http://").trim_end_matches('/');
        let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET /status HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        serde_json::from_str(text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default()).expect("status JSON")
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium with the flags that work on these machines (no sandbox as root, no
/// background networking: the network is closed), in a fresh profile.
fn chromium(args: &[&str]) -> std::process::Output {
    let profile = tempdir("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Lets the page's script fetch and render before the DOM is taken.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium ({e}): apt-get install chromium (.ci/run installs it)"));
    let _ = std::fs::remove_dir_all(&profile);
    out
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capgate-it-{}-{name}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The page's DOM after its script ran.
fn dom(url: &str) -> String {
    let out = chromium(&["--dump-dom", url]);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `attr` on the replica card of `replica` in `dom`.
fn card_attr(dom: &str, replica: &str, attr: &str) -> Option<String> {
    let start = dom.find(&format!("data-replica=\"{replica}\""))?;
    let tag_start = dom[..start].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let key = format!("{attr}=\"");
    let at = tag.find(&key)? + key.len();
    Some(tag[at..at + tag[at..].find('"')?].to_owned())
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_dashboard_shows_a_partition_and_the_lag_growing() {
    let _one = crate::demo::one_at_a_time();
    let mut demo = DemoProcess::start();
    wait_until("the replica to be healthy", || demo.status()["replicas"][0]["state"] == "healthy");

    let page = dom(&demo.dashboard);
    assert_eq!(card_attr(&page, "b", "data-state").as_deref(), Some("healthy"), "{page}");
    assert!(page.contains("data-ok=\"true\""), "the page could not read /status: {page}");
    for table in ["public.accounts", "public.cart_items", "public.page_views"] {
        assert!(page.contains(&format!("data-table=\"{table}\"")), "{table} missing from the tables: {page}");
    }
    assert!(page.contains("data-match=\"public.cart_items\" data-mode=\"bounded\""), "policy rules missing: {page}");

    demo.command("cut");
    wait_until("capgate to see the partition", || demo.status()["replicas"][0]["state"] == "partitioned");
    // Async writes queue while the link is cut.
    let psql = |sql: &str| {
        let out = Command::new("psql").args(["-X", "-q", "-c", sql, &demo.dsn]).output().expect("psql");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    };
    psql("INSERT INTO page_views (path) VALUES ('/cut/1'), ('/cut/2')");
    wait_until("the lag to be measured", || demo.status()["replicas"][0]["lag_seconds"].as_f64().unwrap_or(0.0) > 0.0);

    let first = dom(&demo.dashboard);
    assert_eq!(card_attr(&first, "b", "data-state").as_deref(), Some("partitioned"), "{first}");
    assert!(first.contains("class=\"badge partitioned\""), "{first}");
    let lag = |page: &str| card_attr(page, "b", "data-lag").and_then(|l| l.parse::<f64>().ok()).unwrap_or(-1.0);
    let lag1 = lag(&first);
    assert!(lag1 > 0.0, "no lag shown while partitioned: {first}");
    std::thread::sleep(Duration::from_secs(2));
    let second = dom(&demo.dashboard);
    let lag2 = lag(&second);
    assert!(lag2 > lag1, "the lag did not grow between two loads: {lag1} then {lag2}");

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    let shot = artifacts.join("dashboard.png");
    let out = chromium(&["--window-size=1280,1100", &format!("--screenshot={}", shot.display()), &demo.dashboard]);
    assert!(out.status.success() && shot.metadata().map(|m| m.len() > 10_000).unwrap_or(false), "no screenshot taken");

    demo.command("heal");
    wait_until("the replica to be healthy again", || demo.status()["replicas"][0]["state"] == "healthy");
    let healed = dom(&demo.dashboard);
    assert_eq!(card_attr(&healed, "b", "data-state").as_deref(), Some("healthy"), "{healed}");
}

#[test]
fn the_dashboard_follows_the_admin_token() {
    let _one = crate::demo::one_at_a_time();
    let proxy = crate::support::Proxy::start("admin = \"127.0.0.1:0\"\nadmin_token = \"s3cret\"\n");
    let url = format!("http://{}/", proxy.admin.expect("admin listener"));
    // Without the token the page loads but shows no data: it asks for the token.
    let page = dom(&url);
    assert!(page.contains("needs the admin token") && page.contains("data-ok=\"false\""), "{page}");
    assert!(!page.contains("<form id=\"token-form\" hidden"), "the token form is not shown: {page}");
    // With the token in the address it shows the site.
    let page = dom(&format!("{url}#token=s3cret"));
    assert!(page.contains("data-ok=\"true\""), "{page}");
    assert!(page.contains("<span id=\"site\" class=\"site\">test</span>"), "{page}");
    assert!(page.contains("<form id=\"token-form\" hidden"), "{page}");
}
