//! Where things are in a TOML document, for messages that name a line: shared by the main
//! configuration's reader and the policy loader, which both walk a toml_edit document by
//! hand to report every problem at once.

use std::ops::Range;

use toml_edit::{Item, Table};

/// The 1-based line of byte `offset` in `text`.
pub(crate) fn line(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// The span of `key`'s value in `table`, else of the key, else of the table.
pub(crate) fn span_of(table: &Table, key: &str) -> Option<Range<usize>> {
    table.get(key).and_then(Item::span).or_else(|| table.key(key).and_then(|k| k.span())).or_else(|| table.span())
}

/// The keys of `table` not in `allowed`, each with the span of the key.
pub(crate) fn unknown_keys<'t>(table: &'t Table, allowed: &[&str]) -> Vec<(&'t str, Option<Range<usize>>)> {
    table
        .iter()
        .filter(|(key, _)| !allowed.contains(key))
        .map(|(key, _)| (key, table.key(key).and_then(|k| k.span()).or_else(|| span_of(table, key))))
        .collect()
}
