//! psycopg 3 (libpq-based, from PyPI) through the proxy: tests/python/compat.py runs the same
//! scenario against the proxy and directly and fails on any difference.

use std::process::Command;

use crate::support::Proxy;

#[test]
fn psycopg_sees_no_difference() {
    let proxy = Proxy::start("");
    let python = std::env::var("CAPGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "tests/python/compat.py",
            "--proxy",
            &proxy.url("postgres", "postgres"),
            "--direct",
            &Proxy::direct_url("postgres", "postgres"),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (psycopg 3 is installed by .ci/run)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compat.py failed:\n{stdout}\n{stderr}");
    let checks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(checks >= 10, "compat.py ran only {checks} checks:\n{stdout}");
}
