//! The fuzz targets' bodies, shared by the libFuzzer binaries (`fuzz/fuzz_targets/*.rs`, run
//! with `cargo fuzz run -s none TARGET` on stable Rust) and by the test that replays the
//! corpora and a few thousand mutations of them on every `scripts/test` (`tests/fuzz.rs`).
//!
//! Each target takes arbitrary bytes and must return without panicking, without unbounded
//! memory and in bounded time; where a target can check more than "no panic" (a stream walked
//! in one piece and in many pieces must give the same frames; a startup packet that parses
//! must encode back to the same bytes), it asserts it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use capgate::classify::{classify, Catalog, Dialect, SearchPath};
use capgate::config::Config;
use capgate::frontend::postgres::relay::{self, SessionState};
use capgate::frontend::postgres::statements::Statements;
use capgate::policy::{Policy, PolicyHandle};
use capgate::protocol::mysql::command::{parse_kill, Command};
use capgate::protocol::mysql::handshake::{client_caps, is_ssl_request, Greeting, Response};
use capgate::protocol::mysql::packet;
use capgate::protocol::mysql::response::{parse_err, parse_ok, Event, Reply, Tracker};
use capgate::protocol::postgres::frame::{frames, FrameCursor, FrameError, Step};
use capgate::protocol::postgres::message::{auth_code, error_fields, password_body, sasl_mechanisms};
use capgate::protocol::postgres::scram::{ScramServer, Verifier};
use capgate::protocol::postgres::startup::{self, StartupMessage, StartupPacket};
use capgate::replicate::Router;

/// A target: arbitrary bytes in, a panic on anything wrong.
pub type Target = fn(&[u8]);

/// Every target, by name, for the corpus test.
pub const TARGETS: [(&str, Target); 8] = [
    ("frame", frame),
    ("startup", startup_packet),
    ("messages", messages),
    ("session", session),
    ("classify", classify_sql),
    ("policy", policy),
    ("config", config),
    ("mysql", mysql),
];

/// What walking a stream produced: each frame's start offset, tag and whether it came whole,
/// then the error that ended the walk, if any.
type Walk = (Vec<(usize, u8, bool)>, Option<FrameError>);

/// The frame cursor, as the relay pumps drive it. The first two bytes choose the inspected
/// tags and the sizes the stream arrives in; the rest is the stream. Walked in one buffer and
/// in pieces (keeping the unconsumed tail, as a pump does), it must yield the same frames and
/// the same error, and every step must stay inside the buffer it was given.
pub fn frame(data: &[u8]) {
    let [mask, chunk, stream @ ..] = data else { return };
    let inspect = |tag: u8| (tag.rotate_left(u32::from(*mask & 7)) ^ mask) & 3 == 0;
    let max_len = if mask & 0x80 != 0 { 1 << 12 } else { u32::MAX };
    let whole = walk(stream, stream.len().max(1), inspect, max_len);
    let pieces = walk(stream, usize::from(*chunk % 61) + 1, inspect, max_len);
    assert_eq!(whole, pieces, "the same stream in pieces of {} bytes walked differently", *chunk % 61 + 1);
    // The plain iterator over whole frames agrees with the cursor when nothing is inspected.
    let mut at = 0;
    for f in frames(stream) {
        match f {
            Ok((_, body)) => at += body.len() + 5,
            Err(_) => break,
        }
    }
    assert!(at <= stream.len());
}

fn walk(stream: &[u8], piece: usize, inspect: impl Fn(u8) -> bool, max_len: u32) -> Walk {
    let mut cursor = FrameCursor::new(max_len);
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0; // stream offset of buf[0]
    let mut events = Vec::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        let mut at = 0;
        while at < buf.len() {
            let before_boundary = cursor.at_boundary();
            match cursor.step(&buf[at..], &inspect) {
                Ok(Step::Pass { n, tag }) => {
                    assert!(n > 0 && n <= buf.len() - at, "pass of {n} with {} buffered", buf.len() - at);
                    assert_eq!(tag.is_some(), before_boundary);
                    if let Some(tag) = tag {
                        events.push((base + at, tag, false));
                    }
                    at += n;
                }
                Ok(Step::Whole { tag, len }) => {
                    assert!(len >= 5 && len <= buf.len() - at && buf[at] == tag);
                    events.push((base + at, tag, true));
                    at += len;
                }
                Ok(Step::NeedMore { total }) => {
                    assert!(total > buf.len() - at);
                    break;
                }
                Err(e) => return (events, Some(e)),
            }
        }
        buf.drain(..at);
        base += at;
    }
    (events, None)
}

/// Startup packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest): what parses
/// whole encodes back to the very bytes it came from.
pub fn startup_packet(data: &[u8]) {
    let declared = startup::packet_len(data);
    let parsed = startup::parse(data);
    if let (Ok(Some(len)), Ok(StartupPacket::Startup(message))) = (declared, parsed) {
        if len == data.len() {
            assert_eq!(message.encode(), data, "a startup message did not encode back to its bytes");
        }
    }
}

/// The message views the session reads from frames (authentication requests, SASL mechanism
/// lists, error fields, password messages) and the SCRAM server's two steps on client data.
pub fn messages(data: &[u8]) {
    for (tag, body) in frames(data).map_while(Result::ok) {
        match tag {
            b'R' => {
                if let Some((_, rest)) = auth_code(body) {
                    let _ = sasl_mechanisms(rest);
                }
            }
            b'E' | b'N' => {
                let _ = error_fields(body);
            }
            _ => {
                let _ = password_body(body);
            }
        }
    }
    // SCRAM: client-first and client-final separated by the first 0xff.
    let (first, last) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut server = ScramServer::new(scram_verifier().clone());
    if server.client_first(first).is_ok() {
        let _ = server.client_final(last);
    }
    let _ = std::str::from_utf8(data).map(Verifier::parse);
}

fn scram_verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::from_password("fuzz"))
}

/// A session's bookkeeping as the relay pumps drive it: client frames through the statement
/// tracking (classification, policy decisions, refusals, prepared statements, search_path)
/// and the reply accounting, server frames through the reply accounting. The input is a
/// sequence of records `direction, tag, length (u16), body`.
pub fn session(data: &[u8]) {
    let startup = StartupMessage { major: 3, minor: 0, params: vec![("user".into(), "fuzz".into())] };
    let state = SessionState::new();
    let mut statements = Statements::new(session_router().clone(), session_replication().clone(), &startup);
    let mut rest = data;
    while let [direction, tag, hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let mut frame = vec![*tag];
        frame.extend_from_slice(&(n as u32 + 4).to_be_bytes());
        frame.extend_from_slice(body);
        if direction & 1 == 0 {
            let whole = relay::client_inspect(*tag).then_some(&frame[..]);
            if let Some(frame) = whole {
                statements.message(&state, *tag, frame);
                if matches!(tag, b'Q' | b'B' | b'S') {
                    let _ = statements.hold(&state, *tag, frame);
                }
            }
            let _ = relay::client_frame(&state, *tag);
            if let Some(frame) = whole.filter(|_| matches!(tag, b'Q' | b'P' | b'C' | b'F')) {
                let _ = statements.on_frame(&state, *tag, frame);
            }
        } else {
            let whole = relay::server_inspect(*tag).then_some(&frame[..]);
            let _ = relay::server_frame(&state, *tag, whole, &|| false);
        }
        let _ = (state.owed(), state.is_idle());
    }
}

/// Replication with no replicas: admission decides from the policy alone.
fn session_replication() -> &'static Arc<capgate::frontend::postgres::replication::Replication> {
    static R: OnceLock<Arc<capgate::frontend::postgres::replication::Replication>> = OnceLock::new();
    R.get_or_init(|| {
        let text = "site = \"fuzz\"\n[primary]\nurl = \"postgres://u@127.0.0.1:1/db\"\n";
        let config = capgate::config::Config::parse(text, Path::new("fuzz.toml")).unwrap_or_else(|e| panic!("the fuzz config: {e}"));
        Arc::new(capgate::frontend::postgres::replication::Replication::with_sites(&config, capgate::sites::Sites::new(Vec::new())))
    })
}

fn session_router() -> &'static Arc<Router> {
    static R: OnceLock<Arc<Router>> = OnceLock::new();
    R.get_or_init(|| {
        let text = "default = \"local\"\nunknown = \"refuse\"\n\
                    [[table]]\nmatch = \"public.s_*\"\nmode = \"sync\"\n\
                    [[table]]\nmatch = \"public.a_*\"\nmode = \"async\"\n\
                    [[table]]\nmatch = \"public.b_*\"\nmode = \"bounded\"\nmax_lag = \"1s\"\n";
        let policy = Policy::parse(text, Path::new("fuzz-policy.toml")).unwrap_or_else(|e| panic!("the fuzz policy: {e}"));
        Arc::new(Router::new(Dialect::Postgres, Arc::new(PolicyHandle::fixed(policy)), Catalog::new()))
    })
}

/// The classifier on any text, in both dialects.
pub fn classify_sql(data: &[u8]) {
    let sql = String::from_utf8_lossy(data);
    let path = SearchPath::new(["app", "public"]);
    let catalog = Catalog::new();
    for dialect in [Dialect::Postgres, Dialect::MySql] {
        let c = classify(dialect, &sql, &path, &catalog);
        let _ = (c.writes(), c.unknown_reason());
    }
}

/// The policy file parser and validator.
pub fn policy(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::parse(text, Path::new("fuzz-policy.toml")).map_err(|e| e.to_string());
    }
}

/// The main configuration parser and validator (database URLs included).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, Path::new("/fuzz/capgate.toml")).map_err(|e| e.to_string());
    }
}

/// The MySQL packet framing and views: logical packets (split across 16 MiB physical packets)
/// found in a stream, each payload read as a command, a greeting, a handshake response, an
/// OK or ERR packet, and fed to a reply tracker. A logical packet's payload has the length
/// its headers say, and writing it out again frames it back to the same payload.
pub fn mysql(data: &[u8]) {
    let [mode, stream @ ..] = data else { return };
    let mut rest = stream;
    let mut tracker = Tracker::new(
        [Reply::Nothing, Reply::Ok, Reply::Eof, Reply::Any, Reply::ResultSets, Reply::Prepare, Reply::Rows, Reply::FieldList]
            [usize::from(*mode % 8)],
        mode & 16 != 0,
        mode & 32 != 0,
    );
    while let Ok(Some(logical)) = packet::logical(rest, 1 << 20) {
        assert!(logical.bytes <= rest.len());
        let payload = logical.payload(&rest[..logical.bytes]);
        assert_eq!(payload.len(), logical.payload_len);
        let mut again = Vec::new();
        packet::write(&mut again, logical.seq, &payload);
        let round = packet::logical(&again, 1 << 20).ok().flatten().map(|l| l.payload(&again).into_owned());
        assert_eq!(round.as_deref(), Some(&payload[..]), "a payload did not frame back to itself");
        let _ = Command::parse(&payload).reply();
        let _ = parse_kill(&payload);
        let _ = capgate::frontend::mysql::admin_sql::find(&payload, u16::from(*mode) << 8);
        let _ = Greeting::parse(&payload).map(|g| g.with_caps(u64::MAX));
        let _ = (is_ssl_request(&payload), client_caps(&payload));
        if let Ok(r) = Response::parse(&payload) {
            let _ = r.build(&payload);
        }
        let _ = (parse_ok(&payload, true), parse_ok(&payload, false), parse_err(&payload));
        if let Event::Done(_) = tracker.feed(&payload) {
            tracker = Tracker::new(tracker.reply(), mode & 16 != 0, mode & 32 != 0);
        }
        rest = &rest[logical.bytes..];
    }
}
