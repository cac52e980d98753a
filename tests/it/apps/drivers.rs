//! Three driver stacks in three languages, every table they write replicated: psycopg 3 with
//! SQLAlchemy's ORM (tests/python/apps.py), node-postgres (tests/node/app.js) and pgJDBC
//! (tests/java/PgApp.java). Each runs once without replication (a database of its own on the
//! test primary), then through capgate with its tables `sync`, then `async`: the output must
//! be the same every time, and the sites identical after.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{fresh, reference_db, Mode, Site};

/// The two tables each stack writes, named after the stack.
fn schema(p: &str) -> String {
    format!(
        "DROP TABLE IF EXISTS {p}_acct, {p}_item CASCADE; \
         CREATE TABLE {p}_acct (id int PRIMARY KEY, owner text NOT NULL UNIQUE, balance numeric(12,2) NOT NULL CHECK (balance >= 0)); \
         CREATE TABLE {p}_item (id serial PRIMARY KEY, ref uuid NOT NULL DEFAULT gen_random_uuid(), name text NOT NULL UNIQUE, \
                                payload bytea, tags text[], doc jsonb, qty int NOT NULL DEFAULT 0)"
    )
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out =
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap_or_else(|e| panic!("cannot run {what}: {e} (.ci/run installs it)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.ends_with("done\n"), "{what} stopped early:\n{stdout}");
    stdout
}

/// The reference output (which must show each of `seen`), then the same through capgate in
/// sync and in async mode.
async fn same_everywhere(p: &str, seen: &[&str], program: impl Fn(&str) -> String) {
    let reference = program(&reference_db(&format!("ref_{p}"), &schema(p)));
    for s in seen {
        assert!(reference.contains(s), "{p} did not exercise `{s}`:\n{reference}");
    }
    let _one = crate::replication::exclusive().await;
    for mode in [Mode::Sync, Mode::Async] {
        fresh(&schema(p)).await;
        let site = Site::start(p, mode, &format!("public.{p}_*")).await;
        let got = program(&site.url());
        assert_eq!(got, reference, "{p} through capgate ({}) differs from the run without replication", mode.name());
        site.verify_equal(&[&format!("public.{p}_acct"), &format!("public.{p}_item")]).await;
    }
}

#[tokio::test]
async fn psycopg_and_sqlalchemy_with_every_table_replicated() {
    let python = std::env::var("CAPGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    let seen = [
        "untyped binary update 1",
        "check violation 23514",
        "unique violation in a savepoint 23505",
        "orm unique violation 23505",
        "orm check violation 23514",
    ];
    same_everywhere("ap_py", &seen, |dsn| run("tests/python/apps.py", Command::new(&python).args(["tests/python/apps.py", dsn, "ap_py"])))
        .await;
}

#[tokio::test]
async fn node_postgres_with_every_table_replicated() {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules/pg");
    assert!(modules.exists(), "{} is missing: npm ci --prefix tests/node (.ci/run does)", modules.display());
    same_everywhere("ap_js", &["returning", "unique violation 23505", "in failed transaction 25P02", "pool-5-4"], |dsn| {
        run("tests/node/app.js", Command::new("node").args(["tests/node/app.js", dsn, "ap_js"]))
    })
    .await;
}

const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// Compile tests/java/PgApp.java into a scratch directory.
fn compiled() -> PathBuf {
    let dir = crate::support::scratch("pgjdbc");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/PgApp.java");
    let out = Command::new("javac").args(["-cp", JDBC_JAR, "-d"]).arg(&dir).arg(source).output().expect("run javac (Java 17)");
    assert!(out.status.success(), "javac: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

#[tokio::test]
async fn pgjdbc_with_every_table_replicated() {
    assert!(Path::new(JDBC_JAR).exists(), "{JDBC_JAR} is missing: apt-get install libpostgresql-jdbc-java (.ci/run does)");
    let classes = compiled();
    same_everywhere(
        "ap_java",
        &["generated key j-c 3", "untyped update 1", "select rows 5", "batch 20", "unique violation 23505"],
        |url| {
            // postgres://user@host:port/db -> jdbc:postgresql://host:port/db
            let jdbc = format!("jdbc:postgresql://{}", url.split('@').nth(1).expect("a URL with a user"));
            run(
                "tests/java/PgApp.java",
                Command::new("java").arg("-cp").arg(format!("{JDBC_JAR}:{}", classes.display())).args(["PgApp", &jdbc, "ap_java"]),
            )
        },
    )
    .await;
}
