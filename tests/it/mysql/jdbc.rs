//! MariaDB Connector/J (Debian's libmariadb-java) with server-side prepared statements,
//! through capgate and directly: the same output.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::{primary, MyProxy};

const JAR: &str = "/usr/share/java/mariadb-java-client.jar";

/// Compile tests/java/ConnectorJ.java once into a scratch directory.
fn compiled() -> PathBuf {
    let dir = crate::support::scratch("connector-j");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/ConnectorJ.java");
    let out = Command::new("javac").args(["-cp", JAR, "-d"]).arg(&dir).arg(source).output().expect("run javac (Java 17)");
    assert!(out.status.success(), "javac: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn run(classes: &Path, port: u16, role: &str) -> String {
    let url = format!("jdbc:mariadb://127.0.0.1:{port}/?user=capgate&useServerPrepStmts=true");
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{JAR}:{}", classes.display()))
        .args(["ConnectorJ", &url, role])
        .output()
        .expect("run java");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ConnectorJ ({role}) failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn connector_j_with_server_side_prepares_sees_no_difference() {
    assert!(Path::new(JAR).exists(), "{JAR} is missing: apt-get install libmariadb-java (.ci/run does)");
    let proxy = MyProxy::start("");
    let classes = compiled();
    let direct = run(&classes, primary().port(), "direct");
    let through = run(&classes, proxy.port(), "proxy");
    for expected in
        ["batch 50", "row 2 ", "error 1062 23000", "error 1146 42S02", "count after rollback 50", "streamed 20000 200010000", "done"]
    {
        assert!(direct.contains(expected), "direct output lacks {expected:?}:\n{direct}");
    }
    assert_eq!(through, direct);
}
