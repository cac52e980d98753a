//! Bounded admission at a commit point, from what the transaction actually wrote (decision
//! 0024).
//!
//! A write that names a bounded table is admitted (or refused) at the statement. A write made
//! inside a function (`SELECT f()`), by a trigger on another table or by a foreign-key
//! action names no bounded table: only the capture trigger sees it. While some bounded
//! table's budget is spent, the commit point of a transaction that may have written one that
//! way is held, and here capgate asks the primary which tables the transaction's captured
//! changes touch (one round trip, inside the transaction) and admits the bounded ones as a
//! write to them would be admitted. A refusal rolls the transaction back.

use tokio::io::{AsyncRead, AsyncWrite};

use super::super::{SessionError, Shared};
use super::commit::parse_text_array;
use super::wire::{error_text, Wire};
use crate::classify::TableName;
use crate::policy::{Decision, Mode, Policy};
use crate::replicate::coordinator::UNAVAILABLE;
use crate::replicate::Refusal;

/// The tables the current transaction's captured (async and bounded) changes touch, as a
/// text array (NULL when none); `capgate.changed_tables` is `SECURITY DEFINER`, so the
/// client's role needs no right on `capgate.changes`.
const CHANGED_TABLES: &str = "SELECT capgate.changed_tables()";

/// The refusal of the commit, if a bounded table the transaction changed is over its lag
/// budget (after waiting where the table says `on_partition = "block"`). `extended`: the
/// commit point is inside the client's extended-protocol group (a Sync or a prepared COMMIT),
/// so capgate's own statement must be one too. A failed read refuses the commit as well (the
/// primary's transaction is aborted by it); inside a group it leaves the group failed.
pub async fn refusal<CR, CW, SR, SW>(
    shared: &Shared,
    policy: &Policy,
    wire: &mut Wire<'_, CR, CW, SR, SW>,
    extended: bool,
) -> Result<Option<Refusal>, SessionError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let rows = if extended { wire.own_extended(CHANGED_TABLES).await? } else { wire.own_query(CHANGED_TABLES).await? };
    let tables = match rows {
        Ok(rows) => rows.into_iter().next().and_then(|row| row.into_iter().next().flatten()).map(|t| parse_text_array(&t)),
        Err(frame) => {
            if extended {
                wire.state.fail_group();
            }
            return Ok(Some(Refusal {
                code: UNAVAILABLE,
                message: format!(
                    "capgate could not read which bounded tables this transaction changed ({}); nothing was committed",
                    error_text(&frame)
                ),
                hint: "check that capgate's schema on the primary is current (capgate installs it at start)".into(),
            }));
        }
    };
    let decisions = bounded_decisions(policy, tables.as_deref().unwrap_or_default());
    if decisions.is_empty() {
        return Ok(None);
    }
    Ok(shared.replication.admit_waiting(&decisions, true).await.map(|mut refusal| {
        refusal.message.push_str(
            "; refused at COMMIT (the transaction changed the table, maybe through a function or a trigger): nothing was committed",
        );
        refusal
    }))
}

/// The decisions of the bounded tables among `tables` (as the capture names them).
fn bounded_decisions(policy: &Policy, tables: &[String]) -> Vec<Decision> {
    tables
        .iter()
        .filter_map(|t| TableName::parse(t))
        .map(|t| policy.decide_table(&t))
        .filter(|d| matches!(d.mode, Mode::Bounded { .. }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_tables_are_admitted_at_commit() {
        let text = "default = \"local\"\n[[table]]\nmatch = \"public.cart\"\nmode = \"bounded\"\nmax_lag = \"5s\"\n\
                    [[table]]\nmatch = \"public.*\"\nmode = \"async\"\n";
        let policy = Policy::parse(text, std::path::Path::new("p.toml")).unwrap_or_else(|e| panic!("{e}"));
        let tables = ["public.views".to_owned(), "public.cart".to_owned(), "other.cart".to_owned()];
        let decided: Vec<String> = bounded_decisions(&policy, &tables).iter().map(|d| d.table.to_string()).collect();
        assert_eq!(decided, ["public.cart"]);
        assert!(bounded_decisions(&policy, &[]).is_empty());
    }
}
