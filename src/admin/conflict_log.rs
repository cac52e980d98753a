//! The conflicts of MySQL / MariaDB replicas, read back from `conflict_log`.
//!
//! A MySQL replica keeps no `capgate.conflicts` table: its shipper records each conflict as
//! one JSON line in the configured `conflict_log` (`replicate::shipper::conflicts`), with the
//! replica's name, the change's origin, sequence number and capture time, the table, the
//! kind, both row images, the replica's row and the resolution. `SHOW CAPGATE CONFLICTS`,
//! `GET /conflicts` and `capgate conflicts` list them from there, newest last in the file.
//!
//! The file only grows, so it is read from its end, and never more than [`MAX_READ`] of it:
//! a listing is a look at the latest conflicts, not an audit of the whole file. Lines that
//! are not JSON objects (a line cut short by a crash) are passed over. The records have no
//! resolved state: they cannot be marked resolved.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::{Map, Value};

use super::conflicts::{Conflict, Listing};

/// The most of the file's end read for one listing.
const MAX_READ: u64 = 64 << 20;

/// The first block read from the end; each further one is four times larger.
const FIRST_BLOCK: u64 = 64 << 10;

/// The newest `limit` conflicts of each of `replicas` in the log at `path` (of `only`, when
/// given), newest first within each. A missing file means no conflict was recorded yet.
pub async fn list(path: &Path, replicas: &[String], only: Option<&str>, limit: i64) -> Listing {
    let path = path.to_owned();
    let wanted: Vec<String> = replicas.iter().filter(|r| only.is_none_or(|o| o == r.as_str())).cloned().collect();
    let limit = usize::try_from(limit.max(1)).unwrap_or(1);
    let names = wanted.clone();
    let read = tokio::task::spawn_blocking(move || newest(&path, &names, limit)).await;
    match read {
        Ok(Ok(conflicts)) => Listing { conflicts, errors: Vec::new() },
        Ok(Err(e)) => Listing { conflicts: Vec::new(), errors: wanted.into_iter().map(|r| (r, e.clone())).collect() },
        Err(e) => Listing { conflicts: Vec::new(), errors: wanted.into_iter().map(|r| (r, format!("reading failed: {e}"))).collect() },
    }
}

/// Read blocks from the end of the file until every replica has `limit` records, the start
/// is reached, or [`MAX_READ`] bytes were read.
fn newest(path: &Path, replicas: &[String], limit: usize) -> Result<Vec<Conflict>, String> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot open the conflict log {}: {e}", path.display())),
    };
    let len = file.metadata().map_err(|e| format!("cannot read the conflict log {}: {e}", path.display()))?.len();
    let mut block = FIRST_BLOCK;
    loop {
        let start = len.saturating_sub(block.min(MAX_READ));
        let mut bytes = Vec::with_capacity((len - start) as usize);
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.by_ref().take(len - start).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read the conflict log {}: {e}", path.display()))?;
        let found = records(&bytes, start > 0, replicas, limit);
        let enough = replicas.iter().all(|r| found.iter().filter(|c| &c.replica == r).count() >= limit);
        if enough || start == 0 || block >= MAX_READ {
            return Ok(found);
        }
        block *= 4;
    }
}

/// The records of `bytes` (the file's end; `cut`: its first line may be partial), newest
/// first, at most `limit` per replica.
fn records(bytes: &[u8], cut: bool, replicas: &[String], limit: usize) -> Vec<Conflict> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    if cut {
        lines.next();
    }
    let mut out: Vec<Conflict> = Vec::new();
    for line in lines.rev() {
        let Ok(Value::Object(record)) = serde_json::from_str::<Value>(line) else { continue };
        let Some(replica) = record.get("replica").and_then(Value::as_str).map(str::to_owned) else { continue };
        if !replicas.contains(&replica) || out.iter().filter(|c| c.replica == replica).count() >= limit {
            continue;
        }
        out.push(conflict(replica, record));
    }
    out
}

/// A log record as a [`Conflict`]: its id is the change's sequence number on the origin.
fn conflict(replica: String, mut record: Map<String, Value>) -> Conflict {
    let id = record.get("seq").and_then(Value::as_i64).unwrap_or(0);
    // `replica` names the replica here (the shipper moved the replica's row to
    // `replica_row`); the summary columns show it already.
    record.remove("replica");
    Conflict { replica, id, record }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(replica: &str, seq: i64) -> String {
        serde_json::json!({"replica": replica, "seq": seq, "origin": "west", "tbl": "shop.t", "kind": "update_differs",
            "resolution": "skipped", "detail": "differs", "old": {"id": 1}, "new": {"id": 1}, "replica_row": {"id": 2}})
        .to_string()
    }

    #[test]
    fn newest_first_per_replica_from_the_end_of_a_long_log() {
        let dir = std::env::temp_dir().join(format!("capgate-conflict-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("conflicts.jsonl");
        let mut text = String::new();
        for seq in 0..5_000 {
            text.push_str(&line(if seq % 10 == 0 { "b" } else { "a" }, seq));
            text.push('\n');
        }
        text.push_str("{\"replica\": \"a\", \"seq\": 99999, \"cut short\n");
        std::fs::write(&path, &text).expect("write");
        let replicas = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let got = newest(&path, &replicas, 3).expect("read");
        let ids: Vec<(String, i64)> = got.iter().map(|c| (c.replica.clone(), c.id)).collect();
        let want: Vec<(String, i64)> = [("a", 4999), ("a", 4998), ("a", 4997), ("b", 4990), ("b", 4980), ("b", 4970)]
            .iter()
            .map(|(r, i)| (r.to_string(), *i))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)));
        assert_eq!(sorted, want, "the newest three of each replica, the cut line passed over");
        assert_eq!(got[0].kind().as_deref(), Some("update_differs"));
        assert_eq!(got[0].tables().as_deref(), Some("shop.t"));
        assert!(got[0].details().iter().any(|(k, v)| k == "replica_row" && v.contains('2')));
        assert!(newest(&dir.join("absent.jsonl"), &replicas, 3).expect("absent").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
