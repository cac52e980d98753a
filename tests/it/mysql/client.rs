//! The mariadb command-line client through capgate, compared with a direct connection.

use super::support::{mariadb, primary, MyProxy};

/// Runs tests/sql/mysql_compat.sql at `port`; returns stdout and stderr.
fn run_script(port: u16) -> (String, String) {
    let dir = crate::support::scratch("mysql-client");
    let infile = dir.join("load.csv");
    let rows: String = (1..=1000).map(|i| format!("{i},v{:04}\n", i % 997)).collect();
    std::fs::write(&infile, rows).expect("write csv");
    let script = include_str!("../../sql/mysql_compat.sql").replace("@INFILE@", &infile.display().to_string());
    let out = mariadb(port, &["-u", "capgate", "--force", "--show-warnings", "--local-infile=1", "-B"], &script);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[test]
fn the_mariadb_client_sees_what_it_sees_directly() {
    let proxy = MyProxy::start("");
    let (direct_out, direct_err) = run_script(primary().port());
    let (proxy_out, proxy_err) = run_script(proxy.port());
    let dir = crate::support::scratch("mysql-client");
    std::fs::write(dir.join("direct.out"), format!("{direct_out}\n---stderr---\n{direct_err}")).expect("keep output");
    std::fs::write(dir.join("proxy.out"), format!("{proxy_out}\n---stderr---\n{proxy_err}")).expect("keep output");
    // The script really exercised what it claims to.
    for expected in ["a\nfirst", "b\nsecond", "1000\t500500", "100000\t", "Warning (Code 1265)", "Duplicate entry"] {
        assert!(direct_out.contains(expected) || direct_err.contains(expected), "direct output lacks {expected:?}");
    }
    assert!(direct_err.contains("ERROR 1146 (42S02)") && direct_err.contains("ERROR 1064 (42000)"), "{direct_err}");
    assert_eq!(proxy_err, direct_err, "error output differs");
    if proxy_out != direct_out {
        let first = proxy_out.lines().zip(direct_out.lines()).position(|(a, b)| a != b);
        panic!(
            "output differs (through capgate {} lines, direct {} lines); first difference at line {first:?}:\n{:?}\n{:?}",
            proxy_out.lines().count(),
            direct_out.lines().count(),
            first.and_then(|i| proxy_out.lines().nth(i)),
            first.and_then(|i| direct_out.lines().nth(i)),
        );
    }
}
