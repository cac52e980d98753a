//! `mysql_native_password`: the scramble a client computes from its password and the
//! server's 20-byte nonce, and its check against the stored hash, for capgate's own
//! `[[users]]` and for logging in upstream with the primary URL's password.
//!
//! `scramble = SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password)))`; the server (and
//! capgate) keeps only `SHA1(SHA1(password))`.

use sha1::{Digest, Sha1};

fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What the server stores for a password: `SHA1(SHA1(password))`.
pub fn native_stored_hash(password: &str) -> [u8; 20] {
    sha1(&[&sha1(&[password.as_bytes()])])
}

/// The client's answer to `nonce` (empty for an empty password, as clients send it).
pub fn native_scramble(password: &str, nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = sha1(&[password.as_bytes()]);
    let stage2 = sha1(&[&stage1]);
    let mask = sha1(&[nonce, &stage2]);
    stage1.iter().zip(mask).map(|(a, b)| a ^ b).collect()
}

/// Whether `answer` proves knowledge of the password whose stored hash is `stored`.
pub fn native_verify(stored: &[u8; 20], nonce: &[u8], answer: &[u8]) -> bool {
    if answer.len() != 20 {
        return false;
    }
    let mask = sha1(&[nonce, stored]);
    let stage1: Vec<u8> = answer.iter().zip(mask).map(|(a, b)| a ^ b).collect();
    crate::protocol::constant_time_eq(&sha1(&[&stage1]), stored)
}

/// Whether a server packet of the authentication exchange asks the client for its password
/// in clear text: caching_sha2_password's "perform full authentication" (AuthMoreData 0x04),
/// or a switch to `mysql_clear_password` or MariaDB PAM's `dialog`.
pub fn asks_for_cleartext(payload: &[u8]) -> bool {
    match payload.split_first() {
        Some((0x01, [0x04])) => true,
        Some((0xfe, rest)) => rest.starts_with(b"mysql_clear_password\0") || rest.starts_with(b"dialog\0"),
        _ => false,
    }
}

/// A fresh 20-byte nonce of printable bytes without NUL (some clients stop at a NUL).
pub fn nonce() -> [u8; 20] {
    let mut n: [u8; 20] = rand::random();
    for b in &mut n {
        *b = 0x21 + (*b % 0x5e);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hash_matches_the_servers_password_function() {
        // MariaDB: SELECT PASSWORD('secret') = '*14E65567ABDB5135D0CFD9A70B3032C179A49EE7'
        let hex: String = native_stored_hash("secret").iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(hex, "14E65567ABDB5135D0CFD9A70B3032C179A49EE7");
    }

    #[test]
    fn cleartext_requests_are_recognised() {
        assert!(asks_for_cleartext(&[0x01, 0x04]));
        assert!(!asks_for_cleartext(&[0x01, 0x03]), "fast auth success");
        assert!(asks_for_cleartext(b"\xfemysql_clear_password\0"));
        assert!(asks_for_cleartext(b"\xfedialog\0\x04Password: "));
        assert!(!asks_for_cleartext(b"\xfemysql_native_password\0abcdefghijklmnopqrst\0"));
        assert!(!asks_for_cleartext(b"\xfeclient_ed25519\0"));
        assert!(!asks_for_cleartext(b""));
    }

    #[test]
    fn scramble_verifies_only_with_the_right_password_and_nonce() {
        let n = nonce();
        assert!(n.iter().all(|&b| b != 0));
        let answer = native_scramble("secret", &n);
        assert!(native_verify(&native_stored_hash("secret"), &n, &answer));
        assert!(!native_verify(&native_stored_hash("Secret"), &n, &answer));
        assert!(!native_verify(&native_stored_hash("secret"), &nonce(), &answer));
        assert!(!native_verify(&native_stored_hash("secret"), &n, &answer[..19]));
        assert!(native_scramble("", &n).is_empty());
    }
}
