//! Publishing the current policy and reloading it: on SIGHUP and when the file changes
//! (its modification time or length, polled once a second — simple, portable, no inotify).
//!
//! A bad file never replaces a good policy: the error is logged and the old policy stays,
//! with its version. Readers take an `Arc<Policy>` and keep it as long as they like (a
//! transaction keeps the policy it started with).

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

/// The policy in `path`, refused when the file's rules or `check` find a problem. A reload
/// (`reloading`) also refuses a file that is empty: an editor or `echo … >` truncates the
/// file before writing it, and a watcher that read it in between would otherwise publish an
/// empty policy — every table `local`, the capture triggers removed — until its next read.
fn load_and_check(path: &Path, check: Option<&SiteCheck>, reloading: bool) -> Result<Policy, PolicyError> {
    let problem = |key: &str, message: String| PolicyError {
        file: path.to_owned(),
        problems: vec![PolicyProblem { line: None, key: key.into(), message }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem("(file)", format!("cannot read: {e}")))?;
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
    /// The file's stamp when it was last read, good or bad (so a bad file is reported once,
    /// not every second).
    seen: Mutex<Option<Stamp>>,
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
        let seen = stamp(path);
        let mut policy = load_and_check(path, check.as_ref(), false)?;
        policy.version = 1;
        policy.log_warnings(&path.display().to_string());
        Ok(PolicyHandle { path: Some(path.to_owned()), current: RwLock::new(Arc::new(policy)), seen: Mutex::new(seen), check })
    }

    /// A handle that always serves `policy` (no file, reloads do nothing).
    pub fn fixed(policy: Policy) -> PolicyHandle {
        PolicyHandle { path: None, current: RwLock::new(Arc::new(policy)), seen: Mutex::new(None), check: None }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-read the file. On success the new policy is published with the next version,
    /// which is returned; on failure the old policy stays and the problems are returned.
    pub fn reload(&self) -> Result<u64, PolicyError> {
        let Some(path) = &self.path else {
            return Ok(self.current().version);
        };
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(path);
        let mut policy = load_and_check(path, self.check.as_ref(), true)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        policy.version = current.version + 1;
        let version = policy.version;
        *current = Arc::new(policy);
        Ok(version)
    }

    /// Reload if the file's stamp changed since it was last read; `None` if it did not.
    pub fn reload_if_changed(&self) -> Option<Result<u64, PolicyError>> {
        let path = self.path.as_ref()?;
        let now = stamp(path);
        if now == *self.seen.lock().unwrap_or_else(|p| p.into_inner()) {
            return None;
        }
        Some(self.reload())
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

    /// Watch for SIGHUP and for file changes (polled every second) until the runtime stops.
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
