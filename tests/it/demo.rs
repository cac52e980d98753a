//! `capgate demo` as a newcomer runs it: the narrated story exits 0 having seen every mode
//! behave through a partition, and the clear messages when it cannot run.

use std::process::{Command, Output};

fn capgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run capgate")
}

/// The demo's servers and the browser load this 2-core machine: run them one at a time
/// with the replication tests, whose bounded waits they would otherwise stretch.
pub(crate) fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(crate::replication::exclusive())
}

#[test]
fn the_story_shows_every_mode_through_a_partition() {
    let _one = one_at_a_time();
    let out = capgate(&["demo", "--story", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "the story failed:\n{stdout}\n--- stderr ---\n{stderr}");
    for told in [
        "accounts (sync): UPDATE committed on A and B by two-phase commit",
        "sessions (local): written on A only",
        "capgate saw replica b partitioned",
        "accounts (sync): refused at once: ERROR 55000",
        "nothing was written anywhere: 90.00 on A and on B",
        "page_views (async): 20 INSERTs accepted during the partition",
        "cart_items (bounded, max_lag 5s):",
        "then refused",
        "replica b healthy again",
        "the queue drained",
        "accounts (sync): accepted again, 80.00 on both sites",
        "cart_items (bounded): accepted again",
        "public.accounts, public.cart_items, public.page_views equal on A and B",
        "Every outcome was as described",
    ] {
        assert!(stdout.contains(told), "the story did not tell `{told}`:\n{stdout}");
    }
    assert!(!stdout.contains('✗'), "{stdout}");
}

#[test]
fn without_server_binaries_the_demo_says_how_to_install_them() {
    let out = capgate(&["demo", "--story"], &[("CAPGATE_PGBIN", "/nonexistent/bin")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs PostgreSQL's server binaries") && stderr.contains("apt-get install postgresql"), "{stderr}");
    assert!(stderr.contains("/nonexistent/bin has no initdb"), "{stderr}");
    assert_eq!(stderr.lines().count(), 3, "one message, no log noise: {stderr}");
}

#[test]
fn the_mysql_demo_says_what_is_missing() {
    let out = capgate(&["demo", "--mysql"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("capgate demo --mysql is not built yet"), "{stderr}");
}
