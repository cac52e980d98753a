//! A hand-driven MySQL protocol client for what drivers never send: garbage, pipelined
//! commands, wrong sequence ids, half packets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use capgate::protocol::mysql::handshake::{set_client_caps, Greeting, Response, FIXED_LEN};
use capgate::protocol::mysql::{caps, packet};

pub struct Raw {
    pub stream: TcpStream,
}

/// One packet as received.
#[derive(Debug, Clone)]
pub struct Pkt {
    pub seq: u8,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn is_err(&self) -> bool {
        self.payload.first() == Some(&0xff)
    }

    /// The error code of an ERR packet.
    pub fn code(&self) -> Option<u16> {
        self.is_err().then(|| u16::from_le_bytes([self.payload[1], self.payload[2]]))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// The capabilities the raw client asks for (no DEPRECATE_EOF, so result sets end in EOF).
pub const CLIENT_CAPS: u64 = caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH | caps::TRANSACTIONS | caps::MULTI_RESULTS;

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("raw connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        Raw { stream }
    }

    /// Connect and log in as `capgate` (no password).
    pub fn login(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        let greeting = raw.recv().expect("greeting");
        Greeting::parse(&greeting.payload).expect("a greeting");
        let mut fixed = vec![0u8; FIXED_LEN];
        set_client_caps(&mut fixed, CLIENT_CAPS | caps::CLIENT_MYSQL);
        fixed[8] = 45;
        let r = Response {
            caps: CLIENT_CAPS,
            user: "capgate".into(),
            auth: Vec::new(),
            database: None,
            plugin: Some("mysql_native_password".into()),
            attrs: None,
        };
        raw.send_packet(1, &r.build(&fixed));
        let ok = raw.recv().expect("login reply");
        assert_eq!(ok.payload.first(), Some(&0), "login failed: {ok:?}");
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("raw send");
    }

    pub fn send_packet(&mut self, seq: u8, payload: &[u8]) {
        let mut out = Vec::new();
        packet::write(&mut out, seq, payload);
        self.send(&out);
    }

    /// A COM_QUERY packet.
    pub fn query_packet(sql: &str) -> Vec<u8> {
        let mut payload = vec![0x03];
        payload.extend_from_slice(sql.as_bytes());
        let mut out = Vec::new();
        packet::write(&mut out, 0, &payload);
        out
    }

    /// One packet; `None` when the peer closed.
    pub fn recv(&mut self) -> Option<Pkt> {
        let mut head = [0u8; 4];
        self.stream.read_exact(&mut head).ok()?;
        let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).ok()?;
        Some(Pkt { seq: head[3], payload })
    }

    /// The packets of one text-protocol reply without DEPRECATE_EOF: an OK, an ERR, or a
    /// result set up to its second EOF.
    pub fn reply(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        let mut eofs = 0;
        while let Some(p) = self.recv() {
            let first = p.payload.first().copied();
            let single = out.is_empty() && matches!(first, Some(0x00 | 0xff));
            if first == Some(0xfe) && p.payload.len() < 9 {
                eofs += 1;
            }
            let error = first == Some(0xff);
            out.push(p);
            if single || eofs == 2 || error {
                break;
            }
        }
        out
    }

    /// The first column of the first row of a one-row text result.
    pub fn value(&mut self, sql: &str) -> String {
        self.send(&Raw::query_packet(sql));
        let reply = self.reply();
        assert!(reply.len() >= 4, "no result for {sql}: {reply:?}");
        let row = &reply[reply.len() - 2].payload;
        let len = usize::from(row[0]);
        String::from_utf8_lossy(&row[1..1 + len]).into_owned()
    }

    /// True when the peer has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}
