//! Carried DDL statements (change `S`, decision 0040) a replica missed: which ones it has
//! settled, and running the missed ones there in order.
//!
//! A sync table's statement runs on every replica before the client's reply (the sync
//! step); a replica that fails it (a report on the replica holds the table's metadata lock
//! past the wait) gets it later, in capture order: from the shipper, or — when the policy
//! has no async or bounded rule and so no shipper runs — from the front end's maintenance
//! loop ([`catch_up`] of every statement in the change log, every few seconds). And a later
//! statement of the same table runs on that replica only after the missed ones ([`catch_up`]
//! of the table's earlier statements first, in the later one's sync step): run in the other
//! order, the later one's shape change made the missed one look done, and it was skipped.

use std::collections::{HashMap, HashSet};

use mysql_async::prelude::Queryable;

use super::ddl::{self, Carried, Step, DONE};
use super::held;
use super::image::quote_literal;
use super::missing_is_empty;
use super::position::Position;
use super::ship;
use crate::classify::TableName;

/// What a replica has settled of one origin's carried statements. Why a type: a statement
/// is settled there when its step ran (its record [`DONE`]), or when the shipper moved past
/// it — the replica's position covers it and its table is not halted at or before it (a
/// halted table's changes are held below the position, not applied).
#[derive(Debug, Default)]
pub struct Settled {
    done: HashSet<u64>,
    /// Steps begun whose end is not known: the replica table's shape before each.
    pub begun: HashMap<u64, String>,
    position: Option<Position>,
    /// Halted table → the first change it holds.
    halted: HashMap<String, u64>,
}

impl Settled {
    /// Reads the replica's records of `origin` (the step records before the position: the
    /// shipper deletes a step's record and moves the position in one transaction).
    /// A table not there yet reads as empty: this runs every few seconds on every replica
    /// (the maintenance loop's round), where creating them would log a `CREATE TABLE` in the
    /// replica's binary log each time; the step creates its own before it writes.
    pub async fn read(conn: &mut mysql_async::Conn, origin: &str) -> Result<Settled, mysql_async::Error> {
        let steps: Vec<(u64, String)> =
            missing_is_empty(conn.exec("SELECT seq, shape FROM capgate.ddl_steps WHERE origin = ?", (origin,)).await)?;
        let position: Option<(u64, String)> =
            missing_is_empty(conn.exec_first("SELECT high, holes FROM capgate.applied WHERE origin = ?", (origin,)).await)?;
        let halted: Vec<(String, u64)> =
            missing_is_empty(conn.exec("SELECT tbl, from_seq FROM capgate.halted WHERE origin = ?", (origin,)).await)?;
        let mut out = Settled { position: position.and_then(|(h, j)| Position::parse(h, &j).ok()), ..Settled::default() };
        for (seq, shape) in steps {
            if shape == DONE {
                out.done.insert(seq);
            } else {
                out.begun.insert(seq, shape);
            }
        }
        out.halted = halted.into_iter().collect();
        Ok(out)
    }

    /// Whether change `seq` of table `tbl` is settled on the replica.
    pub fn has(&self, seq: u64, tbl: &str) -> bool {
        self.done.contains(&seq)
            || (self.position.as_ref().is_some_and(|p| p.applied(seq)) && self.halted.get(tbl).is_none_or(|&from| seq < from))
    }
}

/// One carried statement in the primary's change log.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    /// As the change log names it.
    pub tbl: String,
    pub table: TableName,
    pub carried: Carried,
}

/// Primary: the lowest change number some replica in `replicas` may not have applied, by
/// the positions the shippers recorded there and the changes held for halted tables (0 when
/// a replica has no recorded position, or they cannot be read): what [`listed`] starts from.
pub async fn floor(conn: &mut mysql_async::Conn, replicas: &[String]) -> u64 {
    let Ok(shipped) = ship::shipped(conn).await else { return 0 };
    let mut floor = u64::MAX;
    for r in replicas {
        match shipped.iter().find(|(name, _)| name == r) {
            Some((_, pos)) => floor = floor.min(pos.floor()),
            None => return 0,
        }
    }
    match held::floor(conn).await {
        Ok(held) => held.map_or(floor, |h| h.min(floor)),
        Err(_) => 0,
    }
}

/// Primary: the carried statements in the change log from `from` on — of `table` and below
/// `below` when given — in capture order. One that cannot be read is left out (the shipper
/// reports it as a conflict).
pub async fn listed(
    conn: &mut mysql_async::Conn,
    table: Option<&TableName>,
    below: Option<u64>,
    from: u64,
) -> Result<Vec<Pending>, mysql_async::Error> {
    let mut sql = format!("SELECT seq, tbl, new_image FROM capgate.changes WHERE op = '{}' AND seq >= {from}", ddl::OP);
    if let Some(t) = table {
        sql.push_str(&format!(" AND tbl = {}", quote_literal(&t.to_string())));
    }
    if let Some(b) = below {
        sql.push_str(&format!(" AND seq < {b}"));
    }
    sql.push_str(" ORDER BY seq");
    let rows: Vec<(u64, String, Option<String>)> = conn.query(sql).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(seq, tbl, image)| {
            let carried = Carried::from_json(image.as_deref().unwrap_or_default()).ok()?;
            let table = TableName::parse(&tbl)?;
            Some(Pending { seq, tbl, table, carried })
        })
        .collect())
}

/// Replica: runs the statements of `pending` (of `origin`, in order) it has not settled.
/// After one of a table fails or waits, none of that table's later ones runs (it would run
/// before the one it follows). What happened to each run or left, in order.
pub async fn catch_up(
    conn: &mut mysql_async::Conn,
    origin: &str,
    pending: &[Pending],
    wait_secs: u32,
) -> Result<Vec<(u64, String, Step)>, mysql_async::Error> {
    let settled = Settled::read(conn, origin).await?;
    let mut blocked: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for p in pending {
        if settled.has(p.seq, &p.tbl) || blocked.contains(p.tbl.as_str()) {
            continue;
        }
        let step = ddl::run_step(conn, origin, p.seq, &p.table, &p.carried, wait_secs).await?;
        if matches!(step, Step::Failed(_) | Step::Busy(_)) {
            blocked.insert(&p.tbl);
        }
        out.push((p.seq, p.tbl.clone(), step));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_settled_by_its_record_or_by_the_position_of_a_table_not_halted() {
        let mut s = Settled { position: Some(Position { high: 10, holes: [(7, 0.0)].into_iter().collect() }), ..Settled::default() };
        s.done.insert(12);
        s.begun.insert(13, "shape".into());
        s.halted.insert("db.h".into(), 5);
        assert!(s.has(12, "db.t"), "its step ran");
        assert!(!s.has(13, "db.t"), "begun, end not known");
        assert!(s.has(3, "db.t") && s.has(3, "db.h"), "the shipper moved past it");
        assert!(!s.has(7, "db.t"), "a hole is not applied");
        assert!(!s.has(6, "db.h"), "held for the halted table");
        assert!(!s.has(11, "db.t"));
        assert!(!Settled::default().has(1, "db.t"));
    }
}
