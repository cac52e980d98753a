//! Two sites for replication tests: site A's primary and site B's replica, joined by a link
//! a test can slow down or cut.
//!
//! - [`TwoSites`]: both servers on this machine's loopback, the replica reachable (for
//!   capgate) only through a [`Link`], so latency, blackholes and resets are one call away;
//! - [`NetnsSites`]: the replica inside its own network namespace behind a veth pair, cut
//!   with iptables and `ip link` (root only), for kernel-level partitions.
//!
//! "Replica" here is the remote site's own database that capgate replicates writes into,
//! not a PostgreSQL streaming standby: both are independent, writable servers.

mod netns;

pub use netns::{NetnsSites, Partition};

use super::link::Link;
use super::{PgOptions, PgServer, TestbedError};
use std::net::{Ipv4Addr, SocketAddr};

/// Site A (primary) and site B (replica) on loopback, the replica behind a [`Link`].
pub struct TwoSites {
    /// Declared first so it is dropped first: connections through it close before the
    /// servers stop, which keeps their shutdown fast.
    link: Link,
    /// Site A's own database: where capgate at site A sends every session.
    a_primary: PgServer,
    /// Site B's database; capgate must reach it only through `link`.
    b_replica: PgServer,
}

impl TwoSites {
    /// Starts both servers (in parallel) and a link in front of the replica.
    pub fn start() -> Result<TwoSites, TestbedError> {
        let replica = std::thread::spawn(|| PgServer::start(PgOptions::default()));
        let a_primary = PgServer::start(PgOptions::default())?;
        let b_replica = replica.join().map_err(|_| TestbedError::new("starting the replica panicked"))??;
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, b_replica.port()));
        let link = Link::start(target).map_err(|e| TestbedError::new(format!("starting the link to {target}: {e}")))?;
        Ok(TwoSites { link, a_primary, b_replica })
    }

    /// The link in front of site B: `sites.link().set_latency(...)`, `.blackhole()`...
    pub fn link(&self) -> &Link {
        &self.link
    }

    pub fn a_primary(&self) -> &PgServer {
        &self.a_primary
    }

    pub fn b_replica(&self) -> &PgServer {
        &self.b_replica
    }

    /// Site A's primary, as the superuser on database `postgres`.
    pub fn a_primary_url(&self) -> String {
        self.a_primary.superuser_url()
    }

    /// Site B's replica through the link: what capgate and fault tests use.
    pub fn b_replica_url_via_link(&self) -> String {
        let addr = self.link.addr();
        format!("postgres://postgres@{}:{}/postgres", addr.ip(), addr.port())
    }

    /// Site B's replica directly, bypassing the link: for checking what arrived.
    pub fn b_replica_url_direct(&self) -> String {
        self.b_replica.superuser_url()
    }

    /// A capgate configuration for site A (see CONFIG.md): listens on a free port, relays to
    /// site A's primary and replicates to site B through the link.
    pub fn a_config(&self) -> String {
        site_a_config(&self.a_primary_url(), &self.b_replica_url_via_link())
    }
}

/// The configuration text shared by both beds.
fn site_a_config(primary_url: &str, replica_url: &str) -> String {
    format!(
        "site = \"a\"\nlisten = \"127.0.0.1:0\"\n\n[primary]\nurl = \"{primary_url}?sslmode=disable\"\n\n\
         [[replicas]]\nname = \"b\"\nurl = \"{replica_url}?sslmode=disable\"\n"
    )
}
