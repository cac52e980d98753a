//! `capgate demo`: start the demo's two sites and capgate in front of site A; then either
//! tell the story (`--story`) or stay up, taking commands on standard input to cut, slow
//! and heal the link, until Ctrl-C. Everything is removed at the end.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::admin::status;
use crate::demo::{check_binaries, story, Demo, DemoError, Options, DATABASE};
use crate::frontend::postgres::Server;

const COMMANDS: &str = "cut | slow DURATION (e.g. slow 400ms) | heal | status | help | quit";

pub(super) fn demo(tell_story: bool, mysql: bool, listen: Option<SocketAddr>, admin: Option<SocketAddr>) -> ExitCode {
    if mysql {
        eprintln!("{}", DemoError::NoMysqlFrontEnd);
        return ExitCode::from(2);
    }
    if let Err(e) = check_binaries() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    eprintln!("capgate demo: starting site A's primary and site B's replica (throwaway PostgreSQL servers) …");
    let demo = match Demo::start(Options { listen, admin }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(serve(&demo, tell_story));
    drop(runtime);
    drop(demo);
    if !tell_story {
        eprintln!("capgate demo: stopped; both servers and their data are gone");
    }
    code
}

async fn serve(demo: &Demo, tell_story: bool) -> ExitCode {
    let server = match Server::bind(demo.config.clone()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("capgate demo: {e}");
            return ExitCode::from(2);
        }
    };
    let proxy = server.local_addr();
    let admin_addr = server.admin_addr();
    let shared = server.shared();
    let quit = Arc::new(Notify::new());
    let (first, second) = super::signals();
    let stop = {
        let quit = quit.clone();
        async move {
            tokio::select! {
                _ = first => {}
                _ = quit.notified() => {}
            }
        }
    };
    let running = tokio::spawn(server.run(stop, second));
    if tell_story {
        let ok = story::run(demo, proxy, &shared.admin, &mut std::io::stdout()).await;
        quit.notify_one();
        let _ = running.await;
        return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    print_welcome(demo, proxy, admin_addr);
    let mut lines = stdin_lines();
    tokio::pin!(running);
    loop {
        tokio::select! {
            _ = &mut running => break,
            line = lines.recv() => match line {
                Some(line) => {
                    if !command(demo, &shared.admin, line.trim()) {
                        quit.notify_one();
                    }
                }
                // No terminal (stdin closed): stay up until Ctrl-C.
                None => {
                    let _ = (&mut running).await;
                    break;
                }
            },
        }
    }
    ExitCode::SUCCESS
}

/// Standard input, line by line, read on a thread of its own (blocking reads).
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Act on one typed command; false to quit.
fn command(demo: &Demo, admin: &crate::admin::AdminState, line: &str) -> bool {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (None, _) => {}
        (Some("cut"), _) => {
            demo.link.blackhole();
            println!("link cut (silent partition): sync writes are refused once capgate notices; async ones queue");
        }
        (Some("slow"), Some(d)) => match crate::config::parse_duration(d) {
            Ok(latency) => {
                demo.link.set_latency(latency);
                println!("link latency {d} each way (a round trip above 300ms counts as a partition here)");
            }
            Err(e) => println!("slow: {e}"),
        },
        (Some("heal"), _) => {
            demo.heal();
            println!("link healed: the replica goes healing → healthy and the queue drains");
        }
        (Some("status"), _) => {
            let doc = status::status(admin);
            match serde_json::to_value(&doc) {
                Ok(v) => print!("{}", super::status::render(&v)),
                Err(e) => println!("status: {e}"),
            }
        }
        (Some("quit" | "exit"), _) => return false,
        _ => println!("commands: {COMMANDS}"),
    }
    true
}

fn print_welcome(demo: &Demo, proxy: SocketAddr, admin: Option<SocketAddr>) {
    let dashboard = admin.map_or_else(|| "(no admin listener)".to_owned(), |a| format!("http://{a}/"));
    let config = demo.dir().join("capgate.toml");
    println!(
        "\ncapgate demo is up: two sites on this machine, capgate in front of site A.\n\n\
         \x20 connect (site A, through capgate)  psql postgres://postgres@{proxy}/{DATABASE}\n\
         \x20 dashboard                          {dashboard}\n\
         \x20 admin SQL                          psql postgres://postgres@{proxy}/{DATABASE} -c 'SHOW CAPGATE REPLICAS'\n\
         \x20 site A directly                    {}\n\
         \x20 site B directly                    {}\n\
         \x20 the link between them              {} (capgate-link commands on {}: blackhole, latency 200ms, restore)\n\
         \x20 configuration                      {}  (capgate status / verify / conflicts --config …)\n\n\
         tables: accounts (sync) · cart_items (bounded, max_lag 5s) · page_views (async) · sessions (local)\n\
         try:    UPDATE accounts SET balance = balance - 1 WHERE id = 1;  INSERT INTO page_views (path) VALUES ('/');\n\n\
         type a command: {COMMANDS}\n\
         Ctrl-C stops capgate and both servers and removes their data.\n",
        demo.a_url(),
        demo.b_url(),
        demo.link.addr(),
        demo.link_control,
        config.display(),
    );
}
