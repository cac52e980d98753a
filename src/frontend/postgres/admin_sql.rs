//! The admin SQL commands (`SHOW CAPGATE …`, see [`crate::admin::commands`]) on the
//! PostgreSQL port: capgate answers them itself and never forwards them to the primary.
//!
//! The relay holds such a Query like one the coordinator takes over (decision 0008): every
//! reply owed to earlier messages reaches the client first, then capgate writes its own
//! RowDescription, DataRows, CommandComplete (or ErrorResponse) and a ReadyForQuery with
//! the session's transaction status unchanged — the primary never saw the command, so an
//! open transaction is neither advanced nor aborted by it. Only the simple query protocol
//! carries them (psql, the PgBouncer-console habit); a Parse of one is refused.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::statements::cstr;
use super::Shared;
use crate::admin::table::{ColumnType, ResultTable};
use crate::admin::{commands, AdminError};
use crate::protocol::postgres::message::{self, Column, ErrorMessage, Severity};
use crate::replicate::Refusal;

/// Whether this whole client frame is a Query holding an admin command (a look at its
/// first words only: this runs on every Query).
pub fn is_admin_query(tag: u8, frame: &[u8]) -> bool {
    tag == b'Q' && frame.get(5..).is_some_and(commands::is_admin_text)
}

/// What replaces a Parse of an admin command: the primary is made to raise this.
pub fn parse_refusal() -> Refusal {
    Refusal {
        code: "0A000",
        message: "capgate admin commands run in the simple query protocol only".into(),
        hint: "send it as a plain query (psql does; in a driver, use its simple or unprepared query call)".into(),
    }
}

/// If the frame at the front of `buffer` (held by the relay) is an admin Query, remove it
/// and return its text.
pub fn take_held(buffer: &mut BytesMut) -> Option<String> {
    let tag = *buffer.first()?;
    let len = u32::from_be_bytes(buffer.get(1..5)?.try_into().ok()?) as usize;
    let frame = buffer.get(..1 + len)?;
    if !is_admin_query(tag, frame) {
        return None;
    }
    let sql = cstr(&frame[5..])?.to_owned();
    buffer.advance(1 + len);
    Some(sql)
}

/// Run `sql` for `user` and write the whole answer, ending with ReadyForQuery(`tx_status`).
pub async fn answer<W: AsyncWrite + Unpin + ?Sized>(
    shared: &Shared,
    user: &str,
    sql: &str,
    tx_status: u8,
    client: &mut W,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    match commands::run(&shared.admin, user, sql).await {
        Ok(table) => encode(&table, &mut out),
        Err(e) => {
            tracing::info!(%user, "admin command refused: {e}");
            error(&e).encode(&mut out);
        }
    }
    message::ready_for_query(&mut out, tx_status);
    client.write_all(&out).await?;
    client.flush().await
}

fn error(e: &AdminError) -> ErrorMessage {
    let (code, hint) = match e {
        AdminError::Permission(_) => ("42501", Some("add the user to admin_users in the capgate configuration")),
        AdminError::Syntax(_) => ("42601", Some("SHOW CAPGATE HELP lists the commands")),
        AdminError::Unreachable(_) => ("08006", None),
        AdminError::Failed(_) => ("55000", None),
    };
    let m = ErrorMessage::new(Severity::Error, code, e.to_string());
    match hint {
        Some(h) => m.with_hint(h),
        None => m,
    }
}

fn encode(table: &ResultTable, out: &mut BytesMut) {
    let columns: Vec<Column<'_>> = table
        .columns
        .iter()
        .map(|(name, t)| Column {
            name,
            type_oid: match t {
                ColumnType::Text => 25,
                ColumnType::Int => 20,
                ColumnType::Float => 701,
            },
        })
        .collect();
    message::row_description(out, &columns);
    for row in &table.rows {
        let texts: Vec<Option<String>> = row.iter().map(|v| v.to_text()).collect();
        let values: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
        message::data_row(out, &values);
    }
    message::command_complete(out, &format!("SELECT {}", table.rows.len()));
}
