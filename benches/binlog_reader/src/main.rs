//! A measuring tool for decision 0042 (benches/mysql_binlog.sh), not part of capgate: reads a
//! MariaDB/MySQL primary's binary log from its current end through mysql_async's binlog stream,
//! as a replica's I/O thread would, and either only counts the events (`raw`: what a reader
//! costs the primary's dump thread, with the least cost of its own) or decodes every rows event
//! into column values and builds the JSON row images capgate's MySQL apply takes today
//! (`decode`: what capturing from the binary log would cost capgate). Transactions are held
//! until their XID event, as a shipper would hold them, then dropped.
//!
//! `print` writes each event and each decoded row to stdout (for checking how values arrive).
//! With `BINLOG_READER_SKIP_MARKED` set, the reader asks MariaDB to leave out events written
//! under `skip_replication = 1`.
//!
//! Usage: `binlog_reader <mysql url> raw|decode|print <status file>`. Every 100 ms the status file
//! gets `<transactions> <events> <bytes> <rows>` (written to a temporary file, then renamed), so
//! a script can wait until the reader has seen every transaction of a run. Runs until killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts, Value};
use serde_json::{Map, Value as Json};

/// MariaDB's GTID event (`GTID_EVENT` 162: sequence number, domain, flags), which mysql_common
/// does not know; read here by hand as a shipper would to record its position.
const MARIADB_GTID_EVENT: u8 = 0xa2;
/// `XID_EVENT`: the end of a committed InnoDB transaction.
const XID_EVENT: u8 = 0x10;

/// The counters the status file reports (shared with the task writing it).
#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    rows: AtomicU64,
}

/// One change as capgate's shipper holds it: table, operation, old and new JSON image.
type Change = (String, char, Option<String>, Option<String>);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, mode, status] = args.as_slice() else {
        return Err("usage: binlog_reader <mysql url> raw|decode|print <status file>".into());
    };
    let (decode, print) = match mode.as_str() {
        "raw" => (false, false),
        "decode" => (true, false),
        "print" => (true, true),
        _ => return Err("mode must be raw, decode or print".into()),
    };
    let mut conn = Conn::new(Opts::from_url(url)?).await?;
    let (file, pos): (String, u64) = {
        let row: mysql_async::Row = conn.query_first("SHOW MASTER STATUS").await?.ok_or("binary log is off")?;
        (row.get(0).ok_or("no file")?, row.get(1).ok_or("no position")?)
    };
    // MariaDB then sends its own GTID events instead of turning them into BEGIN query events.
    conn.query_drop("SET @mariadb_slave_capability = 4").await?;
    // MariaDB's dump thread then leaves out events written with `skip_replication = 1` (how
    // capgate's apply sessions at a writing site would keep their rows out of its capture).
    if std::env::var_os("BINLOG_READER_SKIP_MARKED").is_some() {
        conn.query_drop("SET skip_replication = 1").await?;
    }
    let mut stream = conn.get_binlog_stream(BinlogStreamRequest::new(4242).with_filename(file.as_bytes()).with_pos(pos)).await?;

    let counters = Arc::new(Counters::default());
    let writer = counters.clone();
    let status = status.clone();
    tokio::spawn(async move {
        let tmp = format!("{status}.tmp");
        loop {
            let line = format!(
                "{} {} {} {}\n",
                writer.transactions.load(Ordering::Relaxed),
                writer.events.load(Ordering::Relaxed),
                writer.bytes.load(Ordering::Relaxed),
                writer.rows.load(Ordering::Relaxed)
            );
            if std::fs::write(&tmp, line).is_ok() {
                let _ = std::fs::rename(&tmp, &status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let mut transaction: Vec<Change> = Vec::new();
    let mut gtid = (0u32, 0u64);
    while let Some(event) = stream.next().await {
        let event = event?;
        counters.events.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(event.data().len() as u64, Ordering::Relaxed);
        let kind = event.header().event_type_raw();
        if print {
            let thread = match event.read_data() {
                Ok(Some(EventData::QueryEvent(q))) => format!(" thread {} query {:?}", q.thread_id(), q.query()),
                _ => String::new(),
            };
            let flags = event.header().flags_raw();
            println!("event {kind:#04x} server {} flags {flags:#06x} len {}{thread}", event.header().server_id(), event.data().len());
        }
        if kind == XID_EVENT {
            counters.transactions.fetch_add(1, Ordering::Relaxed);
            transaction.clear();
            continue;
        }
        if !decode {
            continue;
        }
        if kind == MARIADB_GTID_EVENT {
            let d = event.data();
            if d.len() >= 12 {
                let seq = u64::from_le_bytes(d[0..8].try_into()?);
                let domain = u32::from_le_bytes(d[8..12].try_into()?);
                gtid = (domain, seq);
                if print {
                    println!("  gtid {domain}-{}-{seq} flags {:#04x}", event.header().server_id(), d.get(12).copied().unwrap_or(0));
                }
            }
            continue;
        }
        let Some(EventData::RowsEvent(rows_event)) = event.read_data()? else { continue };
        let Some(tme) = stream.get_tme(rows_event.table_id()) else { continue };
        let table = format!("{}.{}", tme.database_name(), tme.table_name());
        let op = match rows_event {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => 'I',
            RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => 'U',
            _ => 'D',
        };
        for row in rows_event.rows(tme) {
            let (before, after) = row?;
            counters.rows.fetch_add(1, Ordering::Relaxed);
            if print {
                println!("  {table} {op} {before:?} -> {after:?}");
            }
            transaction.push((table.clone(), op, before.map(image), after.map(image)));
        }
    }
    std::hint::black_box(gtid);
    Ok(())
}

/// A row as the JSON image decision 0015 defines (integers as numbers, everything else text).
fn image(row: mysql_async::binlog::row::BinlogRow) -> String {
    let columns = row.columns();
    let mut object = Map::with_capacity(columns.len());
    for (i, value) in row.unwrap().into_iter().enumerate() {
        let name = columns[i].name_str().into_owned();
        let json = match value {
            BinlogValue::Value(Value::NULL) => Json::Null,
            BinlogValue::Value(Value::Int(v)) => Json::from(v),
            BinlogValue::Value(Value::UInt(v)) => Json::from(v),
            BinlogValue::Value(Value::Bytes(b)) => Json::String(String::from_utf8_lossy(&b).into_owned()),
            BinlogValue::Value(other) => Json::String(other.as_sql(true)),
            BinlogValue::Jsonb(j) => Json::String(format!("{j:?}")),
            BinlogValue::JsonDiff(_) => Json::Null,
        };
        object.insert(name, json);
    }
    Json::Object(object).to_string()
}
