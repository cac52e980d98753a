//! Two sites as two network namespaces joined by a veth pair, cut by the kernel.
//!
//! The user-space [`Link`] cannot imitate everything a real partition does: its kernel ACKs
//! what it reads, and connecting to it always succeeds. Here site A and site B are separate
//! network stacks (namespaces `capgate-PID-N-a` / `-b`, addresses 10.231.0.1 and
//! 10.231.0.2 on a /30 that exists only inside them), so a partition is made where a real
//! one happens: iptables DROP (silent), REJECT with tcp-reset (fast failure), or the
//! interface going down.
//!
//! Site B's PostgreSQL runs inside namespace B. Site A's primary stays on the machine's
//! loopback (capgate runs in the test process); the way from this process to site B is a
//! [`Link`] that listens on loopback and dials out from inside namespace A, so everything
//! sent to the replica crosses the veth pair and its iptables rules.
//!
//! Never touches the host's own interfaces or firewall: every `ip` and `iptables` command
//! names one of the namespaces created here. They are deleted on drop, and by a watchdog
//! if this process dies first. Needs root.

use super::{site_a_config, Link, PgOptions, PgServer, TestbedError};
use crate::testbed::process::Watchdog;
use crate::testbed::run;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Site A's address inside namespace A.
const A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
/// Site B's address inside namespace B (the replica listens here).
const B_ADDR: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
/// Both ends of the pair are created directly inside their namespaces, so these names
/// never clash with another bed's or the host's.
const DEV_A: &str = "cg-a";
const DEV_B: &str = "cg-b";

/// Deletes the namespaces named in $@ once the owner's pipe closes (see `process`).
const NETNS_WATCHDOG_SH: &str = r#"trap '' INT HUP TERM PIPE
while read -r cmd arg; do
  case "$cmd" in disarm) exit 0 ;; esac
done
for ns in "$@"; do ip netns del "$ns" 2>/dev/null; done
"#;

/// How to cut the link between the sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// iptables DROP both ways in namespace B: packets vanish, TCP hangs (silent partition).
    Drop,
    /// iptables REJECT with tcp-reset in namespace B: connections fail at once.
    Reject,
    /// Site A's interface down: new connections fail with "network unreachable", open ones
    /// hang.
    LinkDown,
}

/// The two namespaces and the veth pair; deleting them on drop is all its job.
struct Namespaces {
    /// Namespace of site A (where connections to the replica come from).
    a: String,
    /// Namespace of site B (the replica's).
    b: String,
    /// Deletes both namespaces should this process die without dropping us.
    watchdog: Watchdog,
}

impl Namespaces {
    fn create() -> Result<Namespaces, TestbedError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (format!("capgate-{}-{n}-a", std::process::id()), format!("capgate-{}-{n}-b", std::process::id()));
        let watchdog = Watchdog::spawn_script(NETNS_WATCHDOG_SH, &[OsStr::new(&a), OsStr::new(&b)])?;
        // From here on, dropping `ns` deletes whatever was made.
        let ns = Namespaces { a, b, watchdog };
        let (a, b) = (ns.a.as_str(), ns.b.as_str());
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        ip(&["-n", a, "link", "set", "lo", "up"])?;
        ip(&["-n", b, "link", "set", "lo", "up"])?;
        ip(&["link", "add", DEV_A, "netns", a, "type", "veth", "peer", "name", DEV_B, "netns", b])?;
        ip(&["-n", a, "addr", "add", &format!("{A_ADDR}/30"), "dev", DEV_A])?;
        ip(&["-n", b, "addr", "add", &format!("{B_ADDR}/30"), "dev", DEV_B])?;
        ip(&["-n", a, "link", "set", DEV_A, "up"])?;
        ip(&["-n", b, "link", "set", DEV_B, "up"])?;
        Ok(ns)
    }

    /// `iptables -w ARGS` inside namespace B.
    fn iptables_b(&self, args: &[&str]) -> Result<(), TestbedError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.b, "iptables", "-w"]).args(args);
        run(&mut cmd).map(|_| ())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let deleted = [&self.a, &self.b].iter().all(|ns| ip(&["netns", "del", ns]).is_ok());
        if deleted {
            self.watchdog.disarm();
        }
        // Otherwise the watchdog retries when its pipe closes with this process.
    }
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> Result<String, TestbedError> {
    run(Command::new("ip").args(args))
}

/// Site A's primary on loopback and site B's replica in a network namespace, joined by a
/// veth pair (see the module docs).
pub struct NetnsSites {
    /// Dropped first: loopback listener → namespace A → veth → replica.
    forward: Link,
    /// Site B's database, inside namespace B, listening on `B_ADDR`.
    b_replica: PgServer,
    /// Site A's database on the machine's loopback.
    a_primary: PgServer,
    /// Dropped last, once nothing runs inside the namespaces any more.
    ns: Namespaces,
}

impl NetnsSites {
    /// Whether this machine can run the bed; the error says why not (for a test to print
    /// when it skips).
    pub fn available() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        for tool in [["ip", "-V"], ["iptables", "-V"], ["setpriv", "--version"]] {
            run(Command::new(tool[0]).arg(tool[1])).map_err(|e| format!("`{}` is not usable: {e}", tool[0]))?;
        }
        Ok(())
    }

    /// Whether a test that needs the bed runs here. Where it cannot, the test is skipped with
    /// a line saying why, except under CI (`CI` set): CI runs as root, so a bed that cannot
    /// start there is a failure, not a skip that would hide a test that never ran.
    pub fn usable_for(test: &str) -> bool {
        match NetnsSites::available() {
            Ok(()) => true,
            Err(why) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
                panic!("{test}: the network-namespace bed is required when CI is set: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: {why}");
                false
            }
        }
    }

    /// Creates the namespaces, starts both servers and the way into namespace A.
    pub fn start() -> Result<NetnsSites, TestbedError> {
        NetnsSites::available().map_err(TestbedError::new)?;
        let ns = Namespaces::create()?;
        let primary = std::thread::spawn(|| PgServer::start(PgOptions::default()));
        let hba = ["local all all trust", "host all all 127.0.0.1/32 trust", "host all all 10.231.0.0/30 trust"];
        let b_replica = PgServer::start(PgOptions {
            hba: Some(hba.iter().map(|l| l.to_string()).collect()),
            listen_extra: Some(B_ADDR.to_string()),
            netns: Some(ns.b.clone()),
            ..PgOptions::default()
        });
        let a_primary = primary.join().map_err(|_| TestbedError::new("starting the primary panicked"))??;
        let b_replica = b_replica?;
        let target = SocketAddr::from((B_ADDR, b_replica.port()));
        let forward = Link::start_from_netns(target, &ns.a)
            .map_err(|e| TestbedError::new(format!("starting the link into namespace {}: {e}", ns.a)))?;
        Ok(NetnsSites { forward, b_replica, a_primary, ns })
    }

    /// Cuts the sites apart the way `how` says; undo with [`NetnsSites::heal`].
    pub fn partition(&self, how: Partition) -> Result<(), TestbedError> {
        let a = A_ADDR.to_string();
        match how {
            Partition::Drop => {
                self.ns.iptables_b(&["-I", "INPUT", "-s", &a, "-j", "DROP"])?;
                self.ns.iptables_b(&["-I", "OUTPUT", "-d", &a, "-j", "DROP"])
            }
            // The tcp-reset rule must come first (-I inserts on top): an ICMP error is only a
            // soft error to an established TCP connection.
            Partition::Reject => {
                self.ns.iptables_b(&["-I", "INPUT", "-s", &a, "-j", "REJECT"])?;
                self.ns.iptables_b(&["-I", "INPUT", "-s", &a, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])
            }
            Partition::LinkDown => ip(&["-n", &self.ns.a, "link", "set", DEV_A, "down"]).map(|_| ()),
        }
    }

    /// Undoes every partition: flushes namespace B's rules and brings site A's link up.
    pub fn heal(&self) -> Result<(), TestbedError> {
        self.ns.iptables_b(&["-F", "INPUT"])?;
        self.ns.iptables_b(&["-F", "OUTPUT"])?;
        ip(&["-n", &self.ns.a, "link", "set", DEV_A, "up"]).map(|_| ())
    }

    /// The user-space link from this process into namespace A (it can add latency too).
    pub fn forward(&self) -> &Link {
        &self.forward
    }

    pub fn a_primary(&self) -> &PgServer {
        &self.a_primary
    }

    /// Site B's server; its `psql()` runs inside namespace B.
    pub fn b_replica(&self) -> &PgServer {
        &self.b_replica
    }

    pub fn a_primary_url(&self) -> String {
        self.a_primary.superuser_url()
    }

    /// Site B's replica as this process reaches it: through the forward link and the veth.
    pub fn b_replica_url(&self) -> String {
        let addr = self.forward.addr();
        format!("postgres://postgres@{}:{}/postgres", addr.ip(), addr.port())
    }

    /// The replica's address as seen from inside namespace A.
    pub fn b_replica_addr(&self) -> SocketAddr {
        SocketAddr::from((B_ADDR, self.b_replica.port()))
    }

    /// Site A's address inside namespace A (what the replica sees as the client).
    pub fn a_addr(&self) -> Ipv4Addr {
        A_ADDR
    }

    /// Names of the namespaces (A, B), e.g. for `ip netns exec` in a script.
    pub fn namespaces(&self) -> (&str, &str) {
        (&self.ns.a, &self.ns.b)
    }

    /// `program` to be run inside namespace A (`ip netns exec A program`): a capgate
    /// there reaches the replica at [`NetnsSites::b_replica_addr`] with no user-space hop.
    pub fn command_in_a(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.a]).arg(program);
        cmd
    }

    /// A capgate configuration for site A, replicating to site B through the forward link.
    pub fn a_config(&self) -> String {
        site_a_config(&self.a_primary_url(), &self.b_replica_url())
    }
}
