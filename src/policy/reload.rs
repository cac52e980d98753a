//! Publishing the current policy and reloading it: on SIGHUP, on an admin command, and when
//! the file changes (polled once a second — simple, portable, no inotify).
//!
//! A bad file never replaces a good policy: the error is logged and the old policy stays,
//! with its version. Readers take an `Arc<Policy>` and keep it as long as they like (a
//! transaction keeps the policy it started with).
//!
//! The watcher takes a changed file only once a whole poll has passed without it changing
//! again (same modification time, length and bytes on two consecutive polls): a file caught
//! while an editor or a script is still writing it can parse as a smaller policy (its first
//! rules only), and every table whose rule was cut off would become `local` — on MySQL its
//! capture triggers removed at once — until the next poll. SIGHUP and the admin reload are an
//! operator's act: they read the file at once.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use super::{Policy, PolicyError, PolicyProblem};

/// What identifies a version of the file on disk, cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len() })
}

/// The file as one read found it: its stamp and a hash of its bytes (`None`: unreadable). Two
/// reads that agree saw the same file, not one being written between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sighting {
    stamp: Option<Stamp>,
    bytes: Option<u64>,
}

/// The file's bytes as read now, with what identifies them.
fn read(path: &Path) -> (Sighting, std::io::Result<Vec<u8>>) {
    let stamp = stamp(path);
    let bytes = std::fs::read(path);
    let hash = bytes.as_ref().ok().map(|b| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        b.hash(&mut h);
        h.finish()
    });
    (Sighting { stamp, bytes: hash }, bytes)
}

/// What the watcher knows of the file between two polls.
#[derive(Debug, Default)]
struct Watch {
    /// The file as it was last taken (loaded or reloaded, good or bad: a bad file is reported
    /// once, not every second).
    taken: Option<Sighting>,
    /// The file as the last poll found it when it differed from `taken`: taken only if the
    /// next poll finds it unchanged.
    settling: Option<Sighting>,
}

/// What a site can do beyond what the policy file's own rules allow: a MySQL/MariaDB site
/// refuses a policy that asks for something built for PostgreSQL only (a `quorum`, …), at
/// start and at every reload, as it refuses a malformed file.
pub struct SiteCheck(pub Box<SiteCheckFn>);

/// The function of a [`SiteCheck`]: the problems it finds in a policy.
pub type SiteCheckFn = dyn Fn(&Policy) -> Vec<PolicyProblem> + Send + Sync;

impl std::fmt::Debug for SiteCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteCheck")
    }
}

/// The policy in the file's `bytes` (read from `path`), refused when the file's rules or
/// `check` find a problem. A reload (`reloading`) also refuses a file that is empty: an editor
/// or `echo … >` truncates the file before writing it, and a watcher that read it in between
/// would otherwise publish an empty policy — every table `local`, the capture triggers removed
/// — until its next read.
fn check_file(path: &Path, bytes: std::io::Result<Vec<u8>>, check: Option<&SiteCheck>, reloading: bool) -> Result<Policy, PolicyError> {
    let problem = |key: &str, message: String| PolicyError {
        file: path.to_owned(),
        problems: vec![PolicyProblem { line: None, key: key.into(), message }],
    };
    let bytes = bytes.map_err(|e| problem("(file)", format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| problem("(file)", format!("cannot read: not UTF-8 text ({e})")))?;
    if reloading && text.trim().is_empty() {
        return Err(problem(
            "(file)",
            "the file is empty (still being written?): the current policy stays; to make every table local, write \
             `default = \"local\"`"
                .into(),
        ));
    }
    let policy = Policy::parse(&text, path)?;
    let problems = check.map(|c| (c.0)(&policy)).unwrap_or_default();
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyError { file: path.to_owned(), problems })
    }
}

/// The current policy of a process, shared by every session.
#[derive(Debug)]
pub struct PolicyHandle {
    /// The policy file; `None` for a fixed policy (tests, no `policy` key).
    path: Option<PathBuf>,
    /// The published snapshot. A read lock is held only for an `Arc` clone.
    current: RwLock<Arc<Policy>>,
    /// The file as last taken, and as the last poll found it (the watcher's state).
    watch: Mutex<Watch>,
    /// Problems the site finds in a policy the file's rules accept (none: every policy the
    /// file's rules accept is taken).
    check: Option<SiteCheck>,
}

impl PolicyHandle {
    /// Load `path` as version 1.
    pub fn load(path: &Path) -> Result<PolicyHandle, PolicyError> {
        PolicyHandle::load_checked(path, None)
    }

    /// Load `path` as version 1, refused when `check` finds a problem in it; every reload
    /// is checked the same way.
    pub fn load_checked(path: &Path, check: Option<SiteCheck>) -> Result<PolicyHandle, PolicyError> {
        let (seen, bytes) = read(path);
        let mut policy = check_file(path, bytes, check.as_ref(), false)?;
        policy.version = 1;
        policy.log_warnings(&path.display().to_string());
        let watch = Mutex::new(Watch { taken: Some(seen), settling: None });
        Ok(PolicyHandle { path: Some(path.to_owned()), current: RwLock::new(Arc::new(policy)), watch, check })
    }

    /// A handle that always serves `policy` (no file, reloads do nothing).
    pub fn fixed(policy: Policy) -> PolicyHandle {
        PolicyHandle { path: None, current: RwLock::new(Arc::new(policy)), watch: Mutex::default(), check: None }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-read the file now (SIGHUP, an admin command: an operator's act). On success the new
    /// policy is published with the next version, which is returned; on failure the old
    /// policy stays and the problems are returned.
    pub fn reload(&self) -> Result<u64, PolicyError> {
        let Some(path) = &self.path else {
            return Ok(self.current().version);
        };
        let (seen, bytes) = read(path);
        *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = Watch { taken: Some(seen), settling: None };
        self.publish(path, bytes)
    }

    /// The policy in `bytes`, published with the next version when it is good.
    fn publish(&self, path: &Path, bytes: std::io::Result<Vec<u8>>) -> Result<u64, PolicyError> {
        let mut policy = check_file(path, bytes, self.check.as_ref(), true)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        policy.version = current.version + 1;
        let version = policy.version;
        *current = Arc::new(policy);
        Ok(version)
    }

    /// The watcher's poll: reload once the file has changed since it was last taken *and* is
    /// the same as the previous poll found it (a file still being written is left until it
    /// holds still for a whole poll); `None` when nothing is taken this time.
    pub fn reload_if_changed(&self) -> Option<Result<u64, PolicyError>> {
        let path = self.path.as_ref()?;
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(path);
        if watch.taken.is_some_and(|t| t.stamp == now) {
            // Written back as it was (or never changed): nothing to take.
            watch.settling = None;
            return None;
        }
        let (seen, bytes) = read(path);
        if watch.settling != Some(seen) {
            tracing::debug!(file = %path.display(), "the policy file changed; taken once it holds still for a poll");
            watch.settling = Some(seen);
            return None;
        }
        *watch = Watch { taken: Some(seen), settling: None };
        drop(watch);
        Some(self.publish(path, bytes))
    }

    /// Reload, logging the outcome (the watcher's way; also for an admin command).
    pub fn reload_and_log(&self, why: &str) {
        let result = self.reload();
        self.log(why, result);
    }

    fn log(&self, why: &str, result: Result<u64, PolicyError>) {
        let file = self.path.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
        match result {
            Ok(v) => {
                tracing::info!(file, version = v, "policy reloaded ({why})");
                self.current().log_warnings(&file);
            }
            Err(e) => {
                tracing::error!(file, version = self.current().version, "policy not reloaded ({why}), keeping the current version:\n{e}")
            }
        }
    }

    /// Watch for SIGHUP and for file changes (polled every second; a change is taken once it
    /// has held still for a poll) until the runtime stops.
    /// Must be called inside a tokio runtime.
    pub fn spawn_reload_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.spawn_reload_watcher_every(Duration::from_secs(1))
    }

    /// As [`PolicyHandle::spawn_reload_watcher`], with another polling period (tests).
    pub fn spawn_reload_watcher_every(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let handle = Arc::clone(self);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = hangup => handle.reload_and_log("SIGHUP"),
                    _ = tick.tick() => {
                        if let Some(result) = handle.reload_if_changed() {
                            handle.log("file changed", result);
                        }
                    }
                }
            }
        })
    }
}
