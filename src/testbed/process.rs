//! Server processes and their watchdogs.
//!
//! A testbed server is a child of the test process; this module stops it (politely, then by
//! force), tells a crash from a running server, and keeps a watchdog next to it so the
//! server and its directory go away even if the test process dies without running `Drop`.

use super::TestbedError;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Whether `pid` exists and is not a zombie (pid 1 here reaps orphans late, so `kill -0`
/// keeps saying "alive" for a second or two after a process has exited).
pub(crate) fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: `pid (comm) state ...`; comm may contain spaces, so split after the last ')'.
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Live processes whose parent is `pid` (server backends / worker processes).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            ppid == Some(pid)
        })
        .collect()
}

/// Sends `sig` to `pid`; a vanished process is not an error.
pub(crate) fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Polls `child` until it exits (true) or `timeout` passes (false).
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => sleep(Duration::from_millis(10)),
        }
    }
}

/// The watchdog script: reads `pid N` / `disarm` lines; on EOF (owner gone) it sends $1 to
/// the last pid, waits for it to disappear (SIGKILL after 10 s) and removes the directory $2.
const WATCHDOG_SH: &str = r#"trap '' INT HUP TERM PIPE
P=0
while read -r cmd arg; do
  case "$cmd" in pid) P="$arg" ;; disarm) exit 0 ;; esac
done
alive() { s=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1); [ -n "$s" ] && [ "$s" != Z ]; }
if [ "$P" -gt 0 ] 2>/dev/null; then
  kill -"$1" "$P" 2>/dev/null
  i=0
  while alive "$P" && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  alive "$P" && kill -KILL "$P" 2>/dev/null
  i=0
  while alive "$P" && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
fi
rm -rf "$2"
"#;

/// A watchdog process for one instance directory (see the module docs).
pub(crate) struct Watchdog {
    /// The `sh` process; waited for on disarm so it does not linger as a zombie.
    child: Child,
    /// Our end of its stdin: while this is open the watchdog sleeps, EOF means "clean up".
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts a watchdog that, once its owner is gone, sends `sig` (e.g. "QUIT") to the
    /// watched server and removes `dir`.
    pub(crate) fn spawn(dir: &Path, sig: &str) -> Result<Watchdog, TestbedError> {
        Watchdog::spawn_script(WATCHDOG_SH, &[sig.as_ref(), dir.as_os_str()])
    }

    /// Starts a watchdog running the `sh` script `script` with `args` ($1...). The script
    /// reads commands from stdin (at least `disarm`, which must make it exit doing nothing)
    /// and does its cleanup when stdin reaches EOF, i.e. when this process is gone.
    pub(crate) fn spawn_script(script: &str, args: &[&std::ffi::OsStr]) -> Result<Watchdog, TestbedError> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg("capgate-watchdog").args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).current_dir("/");
        // SAFETY: setsid is async-signal-safe; its own session keeps the watchdog out of
        // reach of terminal signals (Ctrl-C) aimed at the test process group.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| TestbedError::new(format!("starting watchdog: {e}")))?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// Tells the watchdog which server pid to signal (None: nothing is running).
    fn watch(&mut self, pid: Option<u32>) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "pid {}", pid.unwrap_or(0));
        }
    }

    /// Stops the watchdog without letting it do anything (the owner cleaned up itself).
    pub(crate) fn disarm(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "disarm");
        }
        let _ = wait_exit(&mut self.child, Duration::from_secs(5));
    }
}

/// A server process plus its watchdog: the part of a server that changes on stop/start.
pub(crate) struct Supervised {
    /// The running server (postmaster / mariadbd); None while stopped.
    child: Option<Child>,
    /// Cleans up if this process dies; kept informed of the current server pid.
    watchdog: Watchdog,
}

impl Supervised {
    pub(crate) fn new(watchdog: Watchdog) -> Supervised {
        Supervised { child: None, watchdog }
    }

    /// Takes over a freshly spawned server process.
    pub(crate) fn attach(&mut self, child: Child) {
        self.watchdog.watch(Some(child.id()));
        self.child = Some(child);
    }

    #[cfg(test)]
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the server process is still running (reaps it if it exited on its own).
    pub(crate) fn is_running(&mut self) -> bool {
        let running = matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
        if !running && self.child.is_some() {
            self.child = None;
            self.watchdog.watch(None);
        }
        running
    }

    /// Sends `sig` and waits up to `grace` for the server to exit, then SIGKILLs it and its
    /// children. Returns once the process has really been reaped.
    pub(crate) fn terminate(&mut self, sig: i32, grace: Duration) -> Result<(), TestbedError> {
        let Some(child) = self.child.as_mut() else { return Ok(()) };
        let pid = child.id();
        if !wait_exit(child, Duration::ZERO) {
            signal(pid, sig);
            if !wait_exit(child, grace) {
                let kids = children_of(pid);
                signal(pid, libc::SIGKILL);
                kids.iter().for_each(|&k| signal(k, libc::SIGKILL));
                if !wait_exit(child, Duration::from_secs(10)) {
                    return Err(TestbedError::new(format!("server pid {pid} survived SIGKILL for 10 s")));
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while kids.iter().any(|&k| alive(k)) && Instant::now() < deadline {
                    sleep(Duration::from_millis(10));
                }
            }
        }
        self.child = None;
        self.watchdog.watch(None);
        Ok(())
    }

    /// Final cleanup for Drop: stop the server (gracefully with `sig`, else by force),
    /// remove `dir`, and disarm the watchdog.
    pub(crate) fn shutdown_and_remove(&mut self, sig: i32, dir: &Path) {
        if self.terminate(sig, Duration::from_secs(30)).is_err() {
            // Leave the rest to the watchdog, which retries with SIGKILL.
            return;
        }
        let _ = fs::remove_dir_all(dir);
        self.watchdog.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tcp_connect, MariaDb, PgOptions, PgServer};
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;

    /// Not a test: the process `watchdog_cleans_up_*` SIGKILLs. Starts the server named by
    /// $CAPGATE_WATCHDOG_HELPER, prints `READY port pid dir`, and waits to be killed.
    #[test]
    #[ignore = "helper process for the watchdog tests"]
    fn watchdog_helper() {
        let Ok(kind) = std::env::var("CAPGATE_WATCHDOG_HELPER") else { return };
        let (port, pid, dir) = if kind == "pg" {
            let srv = Box::leak(Box::new(PgServer::start(PgOptions::default()).unwrap()));
            (srv.port(), srv.pid().unwrap(), srv.data_dir().parent().unwrap().to_path_buf())
        } else {
            let db = MariaDb::shared();
            (db.port(), db.pid().unwrap(), PathBuf::from(format!("/proc/{}/cwd", db.pid().unwrap())).read_link().unwrap())
        };
        println!("READY {port} {pid} {}", dir.display());
        loop {
            sleep(Duration::from_secs(3600));
        }
    }

    /// Runs `watchdog_helper` in a child process, SIGKILLs that process and checks that the
    /// watchdog stops the server and removes its directory.
    fn watchdog_cleans_up(kind: &str) {
        let module = module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest);
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{module}::watchdog_helper"), "--ignored", "--nocapture", "--test-threads=1"])
            .env("CAPGATE_WATCHDOG_HELPER", kind)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
        // libtest prints "test <name> ... " without a newline before our line.
        let ready = lines.find_map(|l| Some(l.unwrap().split_once("READY ")?.1.to_string())).expect("helper died before READY");
        let fields: Vec<&str> = ready.split(' ').collect();
        let (port, pid, dir): (u16, u32, PathBuf) = (fields[0].parse().unwrap(), fields[1].parse().unwrap(), fields[2].into());
        assert!(dir.is_dir() && alive(pid) && tcp_connect(port).is_some());

        signal(helper.id(), libc::SIGKILL);
        helper.wait().unwrap();
        let killed = Instant::now();
        while (dir.exists() || alive(pid)) && killed.elapsed() < Duration::from_secs(30) {
            sleep(Duration::from_millis(20));
        }
        eprintln!("{kind}: watchdog cleaned up {:?} after the owner was killed", killed.elapsed());
        assert!(!alive(pid), "{kind} server pid {pid} still alive");
        assert!(!dir.exists(), "{} still exists", dir.display());
        // The port itself is not checked: once freed, a server started concurrently by another
        // test may already have taken it.
    }

    #[test]
    fn watchdog_cleans_up_pg_when_owner_is_sigkilled() {
        watchdog_cleans_up("pg");
    }

    #[test]
    fn watchdog_cleans_up_mariadb_when_owner_is_sigkilled() {
        watchdog_cleans_up("mariadb");
    }

    #[test]
    fn zombies_count_as_dead() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Not reaped yet: a zombie, which kill(pid, 0) would still report as existing.
        while alive(pid) && Instant::now() < deadline {
            sleep(Duration::from_millis(5));
        }
        assert!(!alive(pid));
        assert!(fs::metadata(format!("/proc/{pid}")).is_ok());
        child.wait().unwrap();
        assert!(alive(std::process::id()));
    }
}
