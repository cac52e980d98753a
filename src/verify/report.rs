//! What verify found, as a person reads it ([`Report::render`]) and as tools read it (the
//! serde form, printed by `capgate verify --json`). Field names are part of the JSON
//! interface: rename nothing without a reason.

use super::compare::TableResult;

/// The outcome for one table on one replica.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    /// `schema.table`, quoted where needed (`vt."Mixed Case"`), as `--table` accepts it.
    pub table: String,
    #[serde(flatten)]
    pub result: TableResult,
}

/// The outcome for one replica.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaReport {
    pub replica: String,
    pub address: String,
    /// How the consistent point was chosen.
    pub consistent_point: String,
    pub tables: Vec<TableReport>,
    pub seconds: f64,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub site: String,
    pub primary: String,
    pub replicas: Vec<ReplicaReport>,
    /// Some table differs somewhere (exit code 1).
    pub diverged: bool,
    /// Some comparison could not be made (exit code 2): see the tables with status `error`.
    pub failed: bool,
    /// Why the selection is what it is when that needs saying (e.g. no policy file, so
    /// nothing is replicated and nothing was compared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Report {
    /// 0 when every comparison was made and found the tables equal, 1 when a table
    /// diverged, 2 when a comparison failed (the check is incomplete, whatever else it found,
    /// as `diff` and `cmp` do).
    pub fn exit_code(&self) -> u8 {
        if self.failed {
            2
        } else {
            u8::from(self.diverged)
        }
    }

    /// The human summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(note) = &self.note {
            out.push_str(&format!("note: {note}\n"));
        }
        if self.replicas.is_empty() {
            out.push_str(&format!("verify: site {}: no [[replicas]] in the configuration, nothing to compare with\n", self.site));
        }
        for r in &self.replicas {
            out.push_str(&format!(
                "verify: site {} primary {} vs replica {} ({}); {}\n",
                self.site, self.primary, r.replica, r.address, r.consistent_point
            ));
            if r.tables.is_empty() {
                out.push_str("  no tables to compare (the policy replicates none, or --table named none)\n");
            }
            for t in &r.tables {
                render_table(&mut out, t);
            }
        }
        let all = || self.replicas.iter().flat_map(|r| &r.tables);
        let tables = all().count();
        let diverged = all().filter(|t| t.result.diverged()).count();
        let failed = all().filter(|t| matches!(t.result, TableResult::Error { .. })).count();
        out.push_str(&format!("summary: {tables} table comparison(s), {} equal, {diverged} diverged", tables - diverged - failed));
        if failed > 0 {
            out.push_str(&format!(", {failed} failed"));
        }
        out.push('\n');
        out
    }
}

/// One table's line, and for a divergence the rows that differ.
fn render_table(out: &mut String, t: &TableReport) {
    out.push_str(&format!("  {:<40} ", t.table));
    match &t.result {
        TableResult::Equal { rows, chunks } => out.push_str(&format!("equal      {rows} rows in {chunks} chunk(s)\n")),
        TableResult::Diverged { rows_primary, rows_replica, chunks, chunks_diverged, rows_differing, differences } => {
            out.push_str(&format!(
                "DIVERGED   {rows_differing} row(s) differ in {chunks_diverged} of {chunks} chunk(s); primary {rows_primary} rows, replica {rows_replica}\n"
            ));
            for d in differences {
                let key = d.key.join(", ");
                match (&d.primary, &d.replica) {
                    (Some(p), Some(q)) => out.push_str(&format!("      key ({key}): primary {p} | replica {q}\n")),
                    (Some(p), None) => out.push_str(&format!("      key ({key}): missing on the replica; primary {p}\n")),
                    (None, Some(q)) => out.push_str(&format!("      key ({key}): only on the replica: {q}\n")),
                    (None, None) => {}
                }
            }
            if *rows_differing > differences.len() as u64 {
                out.push_str(&format!("      … and {} more\n", rows_differing - differences.len() as u64));
            }
        }
        TableResult::NoPrimaryKey { equal: true, rows_primary, .. } => {
            out.push_str(&format!("equal      {rows_primary} rows (no primary key: whole-table checksum)\n"))
        }
        TableResult::NoPrimaryKey { equal: false, rows_primary, rows_replica } => out.push_str(&format!(
            "DIVERGED   whole-table checksums differ (primary {rows_primary} rows, replica {rows_replica}); no primary key, so rows cannot be pinpointed\n"
        )),
        TableResult::MissingOnReplica => out.push_str("DIVERGED   the table does not exist on the replica\n"),
        TableResult::Error { message } => out.push_str(&format!("ERROR      {message}\n")),
    }
}
