//! The server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) without channel binding, as
//! PostgreSQL implements it, for clients that authenticate at the proxy (`[[users]]`).
//!
//! The client side, used to log in upstream, is `postgres_protocol::authentication::sasl`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")]
    BadVerifier,
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported by this server")]
    ChannelBinding,
    /// The password was wrong: the caller reports 28P01 like PostgreSQL.
    #[error("invalid proof")]
    InvalidProof,
}

/// A stored SCRAM-SHA-256 verifier, the format of `pg_authid.rolpassword`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Verifier {
    /// Parse `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<Verifier, ScramError> {
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(ScramError::BadVerifier)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iter, salt) = iter_salt.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let decode = |v: &str| B64.decode(v).map_err(|_| ScramError::BadVerifier);
        let v = Verifier {
            iterations: iter.parse().map_err(|_| ScramError::BadVerifier)?,
            salt: decode(salt)?,
            stored_key: decode(stored)?,
            server_key: decode(server)?,
        };
        if v.stored_key.len() != 32 || v.server_key.len() != 32 || v.iterations == 0 {
            return Err(ScramError::BadVerifier);
        }
        Ok(v)
    }

    /// A verifier for a plain password (SASLprep, random salt, 4096 iterations), computed
    /// once when the configuration is loaded.
    pub fn from_password(password: &str) -> Verifier {
        let s = postgres_protocol::password::scram_sha_256(password.as_bytes());
        Verifier::parse(&s).expect("postgres-protocol produces well-formed verifiers")
    }
}

/// Where a server-side exchange stands.
#[derive(Debug)]
enum State {
    /// Waiting for client-first-message.
    Start,
    /// Sent server-first-message; waiting for client-final-message.
    SentFirst {
        client_first_bare: String,
        server_first: String,
        nonce: String,
        gs2_header: String,
    },
    Done,
}

/// One SCRAM-SHA-256 exchange on the server side.
#[derive(Debug)]
pub struct ScramServer {
    verifier: Verifier,
    state: State,
}

impl ScramServer {
    pub fn new(verifier: Verifier) -> ScramServer {
        ScramServer { verifier, state: State::Start }
    }

    /// Handle the SASLInitialResponse data; returns the server-first-message.
    pub fn client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed("no gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("no gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authorization identity is not supported"));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let mut raw = [0u8; 18];
        rand::fill(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&self.verifier.salt), self.verifier.iterations);
        let gs2_header = format!("{flag},{authzid},");
        self.state = State::SentFirst { client_first_bare: bare.to_owned(), server_first: server_first.clone(), nonce, gs2_header };
        Ok(server_first.into_bytes())
    }

    /// Handle the client-final-message; returns the server-final-message when the proof is
    /// right, [`ScramError::InvalidProof`] when the password is wrong.
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::SentFirst { client_first_bare, server_first, nonce, gs2_header } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Malformed("unexpected message"));
        };
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs.next().and_then(|a| a.strip_prefix("c=")).ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let r = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(ScramError::Malformed("no nonce"))?;
        if B64.decode(cbind).ok().as_deref() != Some(gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding attribute does not match"));
        }
        if r != nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::InvalidProof);
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
        let stored = Sha256::digest(&client_key);
        // The attacker controls the proof.
        if !crate::protocol::constant_time_eq(&stored, &self.verifier.stored_key) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(server_password: &str, client_password: &str) -> Result<(), ScramError> {
        let mut server = ScramServer::new(Verifier::from_password(server_password));
        let mut client = ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let first = server.client_first(client.message())?;
        client.update(&first).unwrap();
        let fin = server.client_final(client.message())?;
        client.finish(&fin).map_err(|_| ScramError::Malformed("client rejected server"))
    }

    #[test]
    fn right_password_passes_both_ways() {
        run("s3cret", "s3cret").unwrap();
    }

    #[test]
    fn wrong_password_is_invalid_proof() {
        assert_eq!(run("s3cret", "guess"), Err(ScramError::InvalidProof));
    }

    #[test]
    fn verifier_parse_rejects_garbage() {
        assert!(Verifier::parse("md5abc").is_err());
        assert!(Verifier::parse("SCRAM-SHA-256$4096:c2FsdA==$YQ==:Yg==").is_err());
    }
}
