//! What the MySQL dialect needs beyond sqlparser's MySqlDialect: the `sql_mode` flags that
//! change tokenizing ([`SqlMode`]), the tables of multi-table UPDATE and DELETE, the
//! statements sqlparser cannot parse (XA, LOAD DATA, DO, `UPDATE a, b SET …` …), MySQL's
//! built-in functions, and what stored routines write ([`add_routines`]).

mod builtins;
mod dialect;
mod fallback;
mod program;
mod routines;
mod targets;

pub use dialect::SqlMode;
pub use routines::{add_routines, Routine, ROUTINES_QUERY};

pub(super) use builtins::builtin;
pub(super) use dialect::parser_dialect;
pub(super) use fallback::{by_keywords, misparsed};
pub(super) use program::definition_end;
pub(super) use targets::{delete as delete_targets, update as update_targets};
