//! `capgate demo`: two sites on this machine, to see capgate work in the first minutes.
//!
//! Site A's primary and site B's replica are throwaway PostgreSQL servers started from the
//! machine's binaries by [`crate::testbed`]; B is reached only through a fault-injecting
//! [`Link`], so the partition between the sites is one command away; capgate runs in this
//! process in front of A with a policy that shows the four modes on a small shop schema:
//!
//! | table        | mode    | why                                                   |
//! |--------------|---------|-------------------------------------------------------|
//! | `accounts`   | sync    | money: never different on two sites                   |
//! | `cart_items` | bounded | a cart may lag a little, not for long (`max_lag` 5 s) |
//! | `page_views` | async   | analytics: never refuse, catch up later               |
//! | `sessions`   | local   | per-site scratch, not replicated                      |
//!
//! [`story`] runs the scenario of the essay the project starts from and checks every
//! outcome. Everything lives in one directory and in the servers' own; all of it is removed
//! when the [`Demo`] is dropped (and by the testbed's watchdogs if the process is killed).

pub mod story;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::testbed::link::{serve_control, Link};
use crate::testbed::{PgOptions, PgServer, TestbedError};

/// The database both sites use.
pub const DATABASE: &str = "shop";

/// The schema, created on both sites before capgate starts (replication never creates
/// tables: see docs/before-you-replicate.md).
pub const SCHEMA: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL);
CREATE TABLE cart_items (cart_id int, sku text, qty int NOT NULL, PRIMARY KEY (cart_id, sku));
CREATE TABLE page_views (id bigserial PRIMARY KEY, path text NOT NULL, viewed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE sessions (id text PRIMARY KEY, account_id int, data jsonb);
INSERT INTO accounts VALUES (1, 'alice', 100.00), (2, 'bob', 50.00);
";

/// The policy: one table per mode.
pub const POLICY: &str = r#"# capgate demo policy: one table per mode (see CONFIG.md, "Policy file").
default = "local"

[[table]]
match = "public.accounts"      # money: both sites or neither (two-phase commit)
mode = "sync"
on_partition = "fail"          # refused at once while the other site is unreachable

[[table]]
match = "public.cart_items"    # may lag a little, not for long
mode = "bounded"
max_lag = "5s"
on_partition = "fail"
on_conflict = "skip"

[[table]]
match = "public.page_views"    # never refused; shipped when the link allows
mode = "async"
on_conflict = "skip"

[[table]]
match = "public.sessions"      # per-site scratch
mode = "local"
"#;

/// Where the demo listens (None: the usual ports if free, else free ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Two sites, the link between them, and capgate's configuration for site A.
pub struct Demo {
    /// Declared first so it is dropped first: its connections close before the servers stop.
    pub link: Arc<Link>,
    /// Where the link takes `capgate-link` commands (`blackhole`, `restore` …).
    pub link_control: SocketAddr,
    a: PgServer,
    b: PgServer,
    /// Holds capgate.toml and policy.toml; removed on drop.
    dir: PathBuf,
    pub config: Arc<Config>,
}

/// Why the demo cannot start; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "capgate demo needs PostgreSQL's server binaries (initdb, postgres, psql), which were not found{0}.\n\
         Install them with:  apt-get install postgresql\n\
         (or point CAPGATE_PGBIN at the directory holding them)"
    )]
    MissingBinaries(String),
    #[error(
        "capgate demo --mysql is not built yet: MySQL/MariaDB tables replicate (sync over XA, async and bounded), but \
         the demo's two throwaway sites are PostgreSQL only; capgate demo shows the modes there meanwhile"
    )]
    NoMysqlFrontEnd,
    #[error("capgate demo: {0}")]
    Testbed(#[from] TestbedError),
    #[error("capgate demo: {0}")]
    Io(#[from] std::io::Error),
    #[error("capgate demo: the generated configuration is invalid (a bug): {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// `preferred` if nothing listens there, else a free port on loopback.
fn port_or_free(preferred: SocketAddr) -> SocketAddr {
    match TcpListener::bind(preferred) {
        Ok(_) => preferred,
        Err(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, crate::testbed::free_port())),
    }
}

/// Fail early, with the install command, when the server binaries are missing.
pub fn check_binaries() -> Result<PathBuf, DemoError> {
    let dir = crate::testbed::pg::bin_dir().map_err(|e| DemoError::MissingBinaries(format!(" ({e})")))?;
    for name in ["initdb", "postgres", "psql"] {
        if !dir.join(name).is_file() {
            return Err(DemoError::MissingBinaries(format!(" ({} has no {name})", dir.display())));
        }
    }
    Ok(dir)
}

impl Demo {
    /// Start both servers (in parallel), create the schema on both, start the link and
    /// write capgate's configuration. Blocking: call it outside the async runtime.
    pub fn start(options: Options) -> Result<Demo, DemoError> {
        check_binaries()?;
        let b = std::thread::spawn(|| PgServer::start(PgOptions::default()));
        let a = PgServer::start(PgOptions::default())?;
        let b = b.join().map_err(|_| TestbedError::new("starting site B's server panicked"))??;
        for server in [&a, &b] {
            server.create_database(DATABASE)?;
            server.psql_in(DATABASE, SCHEMA)?;
        }
        let link = Arc::new(Link::start(SocketAddr::from((Ipv4Addr::LOCALHOST, b.port())))?);
        let control = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let link_control = control.local_addr()?;
        let served = link.clone();
        std::thread::spawn(move || serve_control(served, control));

        let dir = std::env::temp_dir().join(format!("capgate-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let listen = options.listen.unwrap_or_else(|| port_or_free(SocketAddr::from((Ipv4Addr::LOCALHOST, 6432))));
        let admin = options.admin.unwrap_or_else(|| port_or_free(SocketAddr::from((Ipv4Addr::LOCALHOST, 9930))));
        let text = config_text(listen, admin, &a, link.addr());
        std::fs::write(dir.join("policy.toml"), POLICY)?;
        std::fs::write(dir.join("capgate.toml"), &text)?;
        let config = Arc::new(Config::parse(&text, &dir.join("capgate.toml"))?);
        Ok(Demo { link, link_control, a, b, dir, config })
    }

    /// Site A's primary, directly (not through capgate).
    pub fn a_url(&self) -> String {
        self.a.url("postgres", DATABASE)
    }

    /// Site B's replica, directly (not through the link).
    pub fn b_url(&self) -> String {
        self.b.url("postgres", DATABASE)
    }

    /// Heal the link: no more faults, and the connections that lived through the cut are
    /// reset. The link's blackhole drops what was sent meanwhile for good, which a real
    /// network's retransmissions would not; resetting them is what a long outage does.
    pub fn heal(&self) {
        self.link.restore();
        self.link.reset();
    }

    /// The directory holding capgate.toml and policy.toml.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// capgate's configuration for site A: fast health settings, so that a cut link is noticed
/// within about a second.
fn config_text(listen: SocketAddr, admin: SocketAddr, a: &PgServer, link: SocketAddr) -> String {
    format!(
        "# capgate demo: site A, replicating to site B through the demo's link.\n\
         site = \"a\"\nlisten = \"{listen}\"\nadmin = \"{admin}\"\nadmin_users = [\"postgres\"]\npolicy = \"policy.toml\"\n\n\
         [primary]\nurl = \"postgres://postgres@127.0.0.1:{}/{DATABASE}?sslmode=disable\"\n\n\
         [[replicas]]\nname = \"b\"\n\
         url = \"postgres://postgres@{link}/{DATABASE}?sslmode=disable&connect_timeout=2\"\n\
         heartbeat_interval = \"100ms\"\npartition_latency = \"300ms\"\nheartbeat_timeout = \"600ms\"\n",
        a.port()
    )
}
