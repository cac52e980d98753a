//! Shutdown: idle MySQL sessions are closed at once, a session inside a transaction may
//! finish it, new connections are refused, and the server returns.

use std::sync::Arc;

use mysql_async::prelude::*;

use super::support::{connect, primary, url_at};
use capgate::config::Config;
use capgate::frontend::mysql::Server;

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_open_transactions_finish() {
    primary().sql("CREATE DATABASE IF NOT EXISTS life; CREATE TABLE IF NOT EXISTS life.t (x INT)").unwrap();
    let text = format!(
        "site = \"test\"\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"20s\"\n[primary]\nurl = \"mysql://capgate@127.0.0.1:{}/\"\n",
        primary().port()
    );
    let config = Arc::new(Config::parse(&text, std::path::Path::new("capgate.toml")).unwrap());
    let server = Server::bind(config).await.unwrap();
    let port = server.local_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(
        async move {
            let _ = stopped.await;
        },
        std::future::pending(),
    ));
    let mut idle = connect(&url_at(port, "capgate", None, "life")).await;
    let mut busy = connect(&url_at(port, "capgate", None, "life")).await;
    busy.query_drop("BEGIN").await.unwrap();
    busy.query_drop("INSERT INTO t VALUES (42)").await.unwrap();
    stop.send(()).unwrap();
    // The idle session is closed; the one in a transaction commits, then it is closed too.
    let mut closed = false;
    for _ in 0..200 {
        if idle.query_drop("SELECT 1").await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(closed, "the idle session was closed");
    busy.query_drop("INSERT INTO t VALUES (43)").await.expect("the open transaction goes on");
    busy.query_drop("COMMIT").await.expect("and commits");
    tokio::time::timeout(std::time::Duration::from_secs(20), running).await.expect("run returns").unwrap();
    assert!(mysql_async::Conn::from_url(url_at(port, "capgate", None, "life")).await.is_err(), "no new connections");
    assert_eq!(primary().sql("SELECT SUM(x) FROM life.t WHERE x IN (42, 43)").unwrap(), "85");
}
