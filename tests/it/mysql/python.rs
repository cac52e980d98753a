//! PyMySQL (from PyPI) through capgate: tests/python/mysql_compat.py runs each scenario
//! against capgate and directly and fails on any difference.

use std::process::Command;

use super::support::{primary, MyProxy};

#[test]
fn pymysql_sees_no_difference() {
    let proxy = MyProxy::start("");
    let python = std::env::var("CAPGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["tests/python/mysql_compat.py", "--proxy", &proxy.addr.to_string(), "--direct", &format!("127.0.0.1:{}", primary().port())])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (PyMySQL is installed by .ci/run)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mysql_compat.py failed:\n{stdout}\n{stderr}");
    let checks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(checks >= 6, "mysql_compat.py ran only {checks} checks:\n{stdout}");
}
