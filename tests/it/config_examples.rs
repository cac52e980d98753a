//! Every example in config/ passes `capgate check-config`, as a DBA would run it on a copy.

use std::path::{Path, PathBuf};
use std::process::Command;

fn check(file: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_capgate")).args(["check-config", "--config"]).arg(file).output().expect("run capgate");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Every capgate configuration under config/ (files that are not policies).
fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut found = Vec::new();
    for dir in std::fs::read_dir(&root).expect("config/").flatten() {
        for file in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "toml") && path.file_name().is_some_and(|n| n != "policy.toml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_example_configuration_is_valid() {
    let all = examples();
    assert!(all.len() >= 6, "examples missing: {all:?}");
    for file in &all {
        let (code, out) = check(file);
        assert_eq!(code, Some(0), "{}:\n{out}", file.display());
        let policy = file.with_file_name("policy.toml");
        if policy.exists() {
            assert!(out.contains("policy.toml: ok"), "{} names its policy: {out}", file.display());
        }
    }
}
