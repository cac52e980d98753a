//! sysbench through capgate, next to the same run against the primary directly: OLTP
//! read/write with server-side prepared statements (prepared BEGIN and COMMIT included) and
//! with client-side emulation, and oltp_insert. sysbench retries deadlocks by itself; those
//! happen directly too, so the runs are compared rather than required to be error-free.

use super::support::sysbench_figure;
use super::support::{primary, MyProxy};

/// Runs sysbench `script` `command` at `port` on this test's database.
fn sysbench(port: u16, script: &str, command: &str, extra: &[&str]) -> (bool, String) {
    super::support::sysbench(port, script, "sbtest", 2000, command, extra)
}

#[test]
fn sysbench_runs_clean_through_capgate() {
    let proxy = MyProxy::start("");
    primary().sql("DROP DATABASE IF EXISTS sbtest; CREATE DATABASE sbtest").unwrap();
    let (ok, out) = sysbench(proxy.port(), "oltp_read_write", "prepare", &[]);
    assert!(ok, "prepare through capgate failed:\n{out}");
    let run = ["--threads=4", "--time=3", "--report-interval=0"];
    for mode in ["auto", "disable"] {
        let ps = format!("--db-ps-mode={mode}");
        let args = [&run[..], &[ps.as_str()]].concat();
        let (direct_ok, direct) = sysbench(primary().port(), "oltp_read_write", "run", &args);
        let (ok, through) = sysbench(proxy.port(), "oltp_read_write", "run", &args);
        assert!(direct_ok, "direct run failed:\n{direct}");
        assert!(ok && !through.contains("FATAL"), "--db-ps-mode={mode} through capgate failed:\n{through}");
        assert!(sysbench_figure(&through, "transactions:") > 0, "{through}");
        // Errors sysbench ignores are deadlocks it retries: within reason of the direct run.
        let (e_through, e_direct) = (sysbench_figure(&through, "ignored errors:"), sysbench_figure(&direct, "ignored errors:"));
        assert!(e_through <= e_direct.max(1) * 20 + 10, "ignored errors {e_through} through capgate, {e_direct} directly");
    }
    let (ok, out) = sysbench(proxy.port(), "oltp_insert", "run", &run);
    assert!(ok && !out.contains("FATAL") && sysbench_figure(&out, "transactions:") > 0, "oltp_insert through capgate:\n{out}");
    let (ok, out) = sysbench(proxy.port(), "oltp_read_write", "cleanup", &[]);
    assert!(ok, "cleanup:\n{out}");
}
