//! `POST /tables/<table>/resume?replica=<name>`: an operator resumes a table the shipper to
//! `<name>` halted (a `halt` conflict, a failed apply, a table the replica lacks). The table is
//! copied again from the primary, then shipped (decision 0014); on MySQL its held changes are
//! applied instead (`replicate::shipper::mysql::halt`). With `&adopt=true` (PostgreSQL) a
//! halted table the operator made equal on both sites is taken back without a copy (decision
//! 0028: a writing site's table is never emptied). `capgate resume [--adopt]` calls this.
//!
//! Only the process that ships to the replica can act; another one answers 409 and says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::BoxFuture;
use serde::Serialize;

use super::AdminState;
use crate::replicate::shipper::mysql::{LateFleet, MyFleet};
use crate::replicate::shipper::{Fleet, Shipper};

/// How long a resume request waits for the shipper to take it.
const RESUME_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a table was not resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("no replica is named `{0}` in this capgate's configuration")]
    UnknownReplica(String),
    #[error("{0}")]
    NotResumed(String),
}

/// Something that can resume a table for a replica: the running shippers. `adopt`: take the
/// halted table back without copying it.
pub trait Resume: Send + Sync {
    fn resume<'a>(&'a self, replica: &'a str, table: &'a str, adopt: bool) -> BoxFuture<'a, Result<(), ResumeError>>;
}

impl Resume for HashMap<String, Shipper> {
    fn resume<'a>(&'a self, replica: &'a str, table: &'a str, adopt: bool) -> BoxFuture<'a, Result<(), ResumeError>> {
        Box::pin(async move {
            let shipper = self.get(replica).ok_or_else(|| ResumeError::UnknownReplica(replica.to_owned()))?;
            let done = match adopt {
                true => shipper.adopt(table, RESUME_TIMEOUT).await,
                false => shipper.resume(table, RESUME_TIMEOUT).await,
            };
            done.map_err(ResumeError::NotResumed)
        })
    }
}

impl Resume for Fleet {
    fn resume<'a>(&'a self, replica: &'a str, table: &'a str, adopt: bool) -> BoxFuture<'a, Result<(), ResumeError>> {
        self.shippers.resume(replica, table, adopt)
    }
}

/// MySQL: the table's held changes are applied (nothing is copied, so nothing is adopted).
impl Resume for MyFleet {
    fn resume<'a>(&'a self, replica: &'a str, table: &'a str, adopt: bool) -> BoxFuture<'a, Result<(), ResumeError>> {
        Box::pin(async move {
            let shipper = self.shippers.get(replica).ok_or_else(|| ResumeError::UnknownReplica(replica.to_owned()))?;
            if adopt {
                return Err(ResumeError::NotResumed(format!(
                    "a MySQL/MariaDB replica's tables are never copied, so there is nothing to adopt: resume {table} without adopt to apply its held changes"
                )));
            }
            shipper.resume(table, RESUME_TIMEOUT).await.map_err(ResumeError::NotResumed)
        })
    }
}

/// A MySQL fleet that may not have started yet (no async or bounded rule so far).
impl Resume for LateFleet {
    fn resume<'a>(&'a self, replica: &'a str, table: &'a str, adopt: bool) -> BoxFuture<'a, Result<(), ResumeError>> {
        match self.get() {
            Some(fleet) => fleet.resume(replica, table, adopt),
            None => Box::pin(async {
                Err(ResumeError::NotResumed("this capgate process runs no shipper: its policy has had no async or bounded rule".into()))
            }),
        }
    }
}

/// The answer's body.
#[derive(Debug, Serialize)]
pub struct ResumeDoc {
    pub replica: String,
    pub table: String,
    pub resumed: bool,
    pub message: String,
}

pub(super) async fn post_resume(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if !super::http::authorized(&state, &headers) {
        return super::http::unauthorized();
    }
    let replica = query.as_deref().and_then(|q| param(q, "replica"));
    let adopt = query.as_deref().and_then(|q| param(q, "adopt"));
    let answer = |code: StatusCode, replica: &str, resumed: bool, message: String| {
        (code, Json(ResumeDoc { replica: replica.to_owned(), table: table.clone(), resumed, message })).into_response()
    };
    let Some(replica) = replica else {
        return answer(StatusCode::BAD_REQUEST, "", false, "say which replica: POST /tables/<table>/resume?replica=<name>".into());
    };
    let adopt = match adopt.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return answer(StatusCode::BAD_REQUEST, &replica, false, format!("adopt={other}: say adopt=true or adopt=false"));
        }
    };
    let Some(resumer) = &state.resume else {
        return answer(StatusCode::CONFLICT, &replica, false, "this capgate process runs no shipper".into());
    };
    match resumer.resume(&replica, &table, adopt).await {
        Ok(()) => {
            let message = match state.config.primary.url.scheme {
                crate::config::Scheme::MySql => {
                    format!("{table} resumed: its held changes were applied on replica `{replica}`, then shipped")
                }
                _ if adopt => format!(
                    "{table} adopted on replica `{replica}` without a copy: its changes committed on the primary from now on ship there"
                ),
                _ => format!("{table} is copied again to replica `{replica}`, then shipped"),
            };
            tracing::info!(replica = %replica, table = %table, "admin: {message}");
            answer(StatusCode::OK, &replica, true, message)
        }
        Err(e @ ResumeError::UnknownReplica(_)) => answer(StatusCode::NOT_FOUND, &replica, false, e.to_string()),
        Err(e) => answer(StatusCode::CONFLICT, &replica, false, e.to_string()),
    }
}

/// The percent-decoded value of `name` in a query string.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_decoded() {
        assert_eq!(super::param("replica=b&x=1", "replica").as_deref(), Some("b"));
        assert_eq!(super::param("x=1&replica=site%20b%2B", "replica").as_deref(), Some("site b+"));
        assert_eq!(super::param("x=1", "replica"), None);
    }
}
