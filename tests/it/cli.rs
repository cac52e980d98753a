//! The `capgate` command as a DBA uses it.

use std::process::Command;

use crate::support::scratch;

fn capgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_capgate")).args(args).output().expect("run capgate")
}

#[test]
fn check_config_accepts_a_good_file_and_lists_every_problem_of_a_bad_one() {
    let dir = scratch("check-config");
    let good = dir.join("good.toml");
    std::fs::write(&good, "site = \"seattle\"\nlisten = \"127.0.0.1:6432\"\n[primary]\nurl = \"postgres://app:secret@127.0.0.1:5432/app\"\n").unwrap();
    let out = capgate(&["check-config", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret"), "the password is never printed");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "site = \"seattle\"\nmax_connections = -1\n[primary]\nurl = \"mysql://x\"\n[tls]\ncert = \"nope.crt\"\nkey = \"nope.key\"\n").unwrap();
    let out = capgate(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["max_connections", "primary.url", "tls.cert", "tls.key"] {
        assert!(err.contains(&format!("{}: {key}: ", bad.display())), "no line for {key} in:\n{err}");
    }

    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "site = \"seattle\"\n[primary]\nurl = \"postgres://h/db\"\nsslmode = \"require\"\n").unwrap();
    let out = capgate(&["check-config", "--config", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4") && err.contains("sslmode"), "{err}");
}
