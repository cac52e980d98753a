//! Wire protocols, without I/O. Everything here works on byte slices so that it can be unit
//! tested and fuzzed without sockets; the front ends own the sockets.

pub mod mysql;
pub mod postgres;

/// Compare two secrets (a SCRAM key, a cancel secret, a bearer token) without leaking, through
/// timing, how long a prefix the attacker guessed right. Lengths are not secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
