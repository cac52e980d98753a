//! Throwaway real database servers for tests, benchmarks and scripts.
//!
//! capgate sits between applications and real PostgreSQL / MariaDB servers, so its tests
//! talk to real servers, never to mocks: a mock would only confirm what we already believe
//! about the wire protocol. This module starts private server instances on free ports,
//! each in its own directory under `/tmp/capgate-testbed`, and removes them again.
//!
//! - [`pg`]: PostgreSQL instances copied from a once-per-machine `initdb` template;
//! - [`mariadb`]: MariaDB instances copied from a once-per-machine `mariadb-install-db` template;
//! - `process`: stopping server processes, and the watchdogs described below;
//! - [`link`]: a fault-injecting TCP relay (latency, bandwidth, blackhole, reset, refuse);
//! - [`sites`]: two sites (primary + remote replica) joined by a link or by network namespaces.
//!
//! Cleanup must happen even when a test panics, aborts or is SIGKILLed, and statics (the
//! `shared()` servers) are never dropped. So every instance has a *watchdog*: a tiny `sh`
//! process in its own session whose stdin is a pipe held by the test process. When the
//! test process goes away the pipe closes and the watchdog signals the server and removes
//! the instance directory. A normal `Drop` does the same work itself and disarms it.

pub mod link;
pub mod mariadb;
pub mod pg;
mod process;
pub mod sites;

pub use mariadb::{MariaDb, MariaDbOptions};
pub use pg::{PgOptions, PgServer};

use process::Watchdog;
use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Root of every testbed directory: short (unix socket paths are limited to 107 bytes) and
/// traversable by the `postgres` and `mysql` users the servers run as.
const BASE_DIR: &str = "/tmp/capgate-testbed";

/// How long a server may take to become ready before `start` gives up.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Something in the testbed failed; the message says what and, when a server was involved,
/// ends with the tail of its log.
#[derive(Debug)]
pub struct TestbedError(String);

impl TestbedError {
    pub(crate) fn new(msg: impl Into<String>) -> TestbedError {
        TestbedError(msg.into())
    }

    /// An error about a server, with the last lines of its log appended.
    pub(crate) fn with_log(msg: impl fmt::Display, log: &Path) -> TestbedError {
        TestbedError(format!("{msg}\n--- last lines of {} ---\n{}", log.display(), log_tail(log, 40)))
    }
}

impl fmt::Display for TestbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TestbedError {}

/// A TCP port on 127.0.0.1 that was free a moment ago: bind port 0, read it, drop the
/// listener. Never returns the same port twice in one process. Servers retry on a clash,
/// since another process may still grab the port in between.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let seed = u64::from(std::process::id());
    for attempt in 0u64.. {
        let port = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            // Binding port 0 on loopback practically never fails; if it does, guess a port
            // and let the server's clash retry sort it out.
            Err(_) => 20000 + ((seed * 7919 + attempt * 104_729) % 40000) as u16,
        };
        if given.insert(port) || attempt > 1000 {
            return port;
        }
    }
    unreachable!("the loop above always returns")
}

/// Uid and gid of the unprivileged OS user a server runs as.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OsUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl OsUser {
    /// Looks `name` up in /etc/passwd, creating it as a system user if it is missing. A
    /// process that is not root cannot switch users and need not (the servers refuse only
    /// root): its own user runs them.
    pub(crate) fn get(name: &str) -> Result<OsUser, TestbedError> {
        // SAFETY: these calls only read the process's credentials.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if euid != 0 {
            return Ok(OsUser { uid: euid, gid: egid });
        }
        static CREATING: Mutex<()> = Mutex::new(());
        let _guard = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(user) = OsUser::lookup(name)? {
            return Ok(user);
        }
        run(Command::new("useradd").args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]))?;
        OsUser::lookup(name)?.ok_or_else(|| TestbedError::new(format!("useradd {name} did not create the user")))
    }

    fn lookup(name: &str) -> Result<Option<OsUser>, TestbedError> {
        let passwd = fs::read_to_string("/etc/passwd").map_err(|e| TestbedError::new(format!("reading /etc/passwd: {e}")))?;
        Ok(passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0] != name {
                return None;
            }
            Some(OsUser { uid: f[2].parse().ok()?, gid: f[3].parse().ok()? })
        }))
    }

    /// Makes `path` and everything below it belong to this user.
    pub(crate) fn chown_tree(&self, path: &Path) -> Result<(), TestbedError> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| TestbedError::new(format!("chown {}: {e}", path.display())))?;
        if fs::symlink_metadata(path).map(|m| m.is_dir()).unwrap_or(false) {
            let entries = fs::read_dir(path).map_err(|e| TestbedError::new(format!("listing {}: {e}", path.display())))?;
            for entry in entries.flatten() {
                self.chown_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// The testbed root, created world-traversable.
/// Root runs the servers as other users and shares one root; any other user gets a root of
/// its own (`/tmp/capgate-testbed-UID`), since it cannot write into root's.
fn base_dir() -> Result<PathBuf, TestbedError> {
    // SAFETY: only reads the process's credentials.
    let euid = unsafe { libc::geteuid() };
    let base = if euid == 0 { PathBuf::from(BASE_DIR) } else { PathBuf::from(format!("{BASE_DIR}-{euid}")) };
    fs::create_dir_all(&base).map_err(|e| TestbedError::new(format!("creating {}: {e}", base.display())))?;
    // Best effort: another user may own it, in which case it was already made usable.
    let _ = fs::set_permissions(&base, fs::Permissions::from_mode(0o755));
    Ok(base)
}

/// A fresh, private (0700) instance directory `<kind>-<pid>-<n>` owned by `owner`, and the
/// watchdog that removes it (after sending the server `sig`) should this process die.
pub(crate) fn new_instance(kind: &str, owner: OsUser, sig: &str) -> Result<(PathBuf, Watchdog), TestbedError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = base_dir()?;
    loop {
        let dir = base.join(format!("{kind}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        match fs::create_dir(&dir) {
            Ok(()) => {
                let made = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| TestbedError::new(format!("chmod {}: {e}", dir.display())))
                    .and_then(|_| owner.chown_tree(&dir))
                    .and_then(|_| Watchdog::spawn(&dir, sig));
                return match made {
                    Ok(watchdog) => Ok((dir, watchdog)),
                    Err(e) => {
                        let _ = fs::remove_dir_all(&dir);
                        Err(e)
                    }
                };
            }
            // Left over by an earlier process that had our pid: pick the next number.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(TestbedError::new(format!("creating {}: {e}", dir.display()))),
        }
    }
}

/// Returns `BASE_DIR/<name>`, building it first with `build(tmp_dir)` if it does not exist.
/// The build happens in a temporary directory that is renamed into place, so concurrent
/// test processes never see a half-built template (the loser of a race discards its copy).
pub(crate) fn template(name: &str, build: impl FnOnce(&Path) -> Result<(), TestbedError>) -> Result<PathBuf, TestbedError> {
    static BUILDING: Mutex<()> = Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let base = base_dir()?;
    let path = base.join(name);
    if path.is_dir() {
        return Ok(path);
    }
    // Builds abandoned by dead processes would otherwise pile up.
    let prefix = format!("{name}.tmp-");
    for entry in fs::read_dir(&base).into_iter().flatten().flatten() {
        let pid = entry.file_name().to_str().and_then(|n| n.strip_prefix(&prefix)?.parse::<u32>().ok());
        if pid.is_some_and(|pid| !process::alive(pid)) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let tmp = base.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| TestbedError::new(format!("creating {}: {e}", tmp.display())))?;
    if let Err(e) = build(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_dir_all(&tmp);
        if !path.is_dir() {
            return Err(TestbedError::new(format!("renaming template into {}: {e}", path.display())));
        }
    }
    Ok(path)
}

/// `cp -a from to`: keeps owners and modes, which the servers insist on.
pub(crate) fn copy_dir(from: &Path, to: &Path) -> Result<(), TestbedError> {
    run(Command::new("cp").arg("-a").arg(from).arg(to)).map(|_| ())
}

/// Runs a command to completion; its stdout on success, else an error with its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, TestbedError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| TestbedError::new(format!("running {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(TestbedError::new(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `lines` lines of a log file (or why it could not be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read log: {e})"),
    }
}

/// Log text written since byte `offset` (used to tell a port clash from other failures).
pub(crate) fn log_since(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default()).into_owned()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn tcp_connect(port: u16) -> Option<TcpStream> {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(1)).ok()
}

/// Outcome of one attempt to start a server process.
pub(crate) enum Launch {
    /// Accepting connections.
    Ready,
    /// Exited because another process holds the port; the caller picks another and retries.
    PortTaken,
}

/// Start a server again on its own port, retrying for about 5 s while the port is briefly
/// taken (e.g. by someone's ephemeral connection); `what` names the server in the error.
pub(crate) fn relaunch_on_same_port(
    what: &str,
    port: u16,
    log: &Path,
    mut launch: impl FnMut() -> Result<Launch, TestbedError>,
) -> Result<(), TestbedError> {
    for _ in 0..20 {
        if let Launch::Ready = launch()? {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    Err(TestbedError::with_log(format!("{what} restart: port {port} stays taken"), log))
}
