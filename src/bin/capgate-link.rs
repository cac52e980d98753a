//! `capgate-link`: the fault-injecting link as a process, for scripts and benchmarks.
//!
//! ```text
//! capgate-link --listen 127.0.0.1:0 --target 127.0.0.1:5432 --control 127.0.0.1:0
//! listen 127.0.0.1:41234
//! control 127.0.0.1:41235
//! ```
//!
//! It prints where it listens and where it takes commands, then relays until killed. The
//! control port speaks one command per line (`latency 50ms`, `jitter 5ms`,
//! `bandwidth 1000000`, `bandwidth off`, `blackhole`, `reset`, `refuse on|off`, `restore`,
//! `stats`, `help`) and answers each with one line: `ok`, the counters, or `error: ...`.
//! The control port has no authentication: keep it on loopback.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;

use capgate::testbed::link::{serve_control, Link};
use clap::Parser;

/// Command-line arguments.
#[derive(Parser)]
#[command(name = "capgate-link", about = "A fault-injecting TCP relay (latency, bandwidth, blackhole, reset, refuse)")]
struct Args {
    /// Where clients connect (port 0 picks a free port; printed as `listen ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where every connection is relayed to.
    #[arg(long)]
    target: SocketAddr,
    /// Where the line-based control protocol listens (printed as `control ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let link = match Link::start_on(args.listen, args.target) {
        Ok(link) => Arc::new(link),
        Err(e) => {
            eprintln!("capgate-link: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let control = match TcpListener::bind(args.control).and_then(|l| Ok((l.local_addr()?, l))) {
        Ok(control) => control,
        Err(e) => {
            eprintln!("capgate-link: cannot listen for control on {}: {e}", args.control);
            return ExitCode::from(2);
        }
    };
    println!("listen {}", link.addr());
    println!("control {}", control.0);
    let _ = std::io::stdout().flush();
    serve_control(link, control.1);
    ExitCode::SUCCESS
}
