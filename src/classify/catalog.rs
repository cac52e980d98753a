//! What the classifier needs to know about the database that SQL text alone does not say:
//! which functions may write (and what), which tables exist where, which columns have
//! non-deterministic defaults.
//!
//! Protocol-neutral: the PostgreSQL front end fills it from `pg_proc` / `pg_attrdef`, the
//! MySQL one from `information_schema`, and the policy's `[[function]]` entries are added on
//! top. It must never do I/O itself: it is a snapshot, replaced whole when it changes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use super::names::TableName;

/// Every catalog state gets a number no other state in this process had, so a cached
/// classification made with an older catalog is never returned for a newer one.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// PostgreSQL's function volatility (`pg_proc.provolatile`): immutable and stable functions
/// cannot modify the database; volatile ones may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

/// What is known about one user-defined function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// From the primary's catalog; a function named by the policy is volatile.
    pub volatility: Volatility,
    /// The tables a call writes, when someone said so (the policy's `[[function]] writes`).
    /// `None` for a volatile function means "may write anything": the statement is `unknown`.
    pub writes: Option<Vec<TableName>>,
}

/// A column whose default makes an INSERT that omits it non-deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDefault {
    /// The column's stored name.
    pub column: String,
    /// What kind of default, for the message and for the determinism rewrite.
    pub kind: DefaultKind,
    /// The default expression as the catalog shows it, e.g. `nextval('orders_id_seq'::regclass)`.
    pub expr: String,
}

/// Why a column default is not deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultKind {
    /// serial / bigserial / `DEFAULT nextval(…)` (MySQL: AUTO_INCREMENT).
    Sequence,
    /// `GENERATED … AS IDENTITY`.
    Identity,
    /// Any other volatile or time-dependent default (`now()`, `gen_random_uuid()` …).
    Volatile,
}

/// A snapshot of the database facts the classifier consults. Build it, then share it
/// (`Arc<Catalog>`); every change gives it a new [`Catalog::generation`].
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Part of the classification cache key; changes with every mutation.
    generation: u64,
    /// Whether `functions` lists every function of the database (loaded from `pg_proc`): an
    /// unlisted function then does not exist, rather than being of unknown volatility.
    complete: bool,
    /// User-defined functions (and procedures) by (schema, name).
    functions: HashMap<(String, String), FunctionInfo>,
    /// MySQL: routine names compare without regard to case, so they are stored and looked
    /// up in lower case (a policy's `shop.Place_Order` then replaces the primary's
    /// `place_order`, as the policy's word should).
    routine_names_ignore_case: bool,
    /// MySQL's `lower_case_table_names` is 1 or 2: the server stores and compares database
    /// and table names in lower case, so `UPDATE Orders` writes `orders`.
    table_names_lower_case: bool,
    /// Tables known to exist, for resolving unqualified names along the search_path.
    tables: HashSet<(String, String)>,
    /// Schemas known to exist: an unqualified name of an unknown table resolves to the first
    /// search_path schema that exists (as PostgreSQL creates it there), not to `$user`.
    schemas: HashSet<String>,
    /// Columns with non-deterministic defaults, per table.
    defaults: HashMap<TableName, Vec<ColumnDefault>>,
}

impl Default for Catalog {
    fn default() -> Catalog {
        Catalog::new()
    }
}

impl Catalog {
    /// An empty, incomplete catalog: every function that is not a known built-in makes a
    /// statement `unknown`, and unqualified names resolve to the first search_path schema.
    pub fn new() -> Catalog {
        Catalog {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            complete: false,
            functions: HashMap::new(),
            routine_names_ignore_case: false,
            table_names_lower_case: false,
            tables: HashSet::new(),
            schemas: HashSet::new(),
            defaults: HashMap::new(),
        }
    }

    fn touch(&mut self) {
        self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
    }

    /// Identifies this catalog state; used in the classification cache key.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Declare that the function list is the database's whole `pg_proc`.
    pub fn set_complete(&mut self, complete: bool) {
        self.complete = complete;
        self.touch();
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Add or replace a function. A later call for the same name replaces the earlier one, so
    /// add the policy's `[[function]]` entries after the primary's catalog.
    pub fn add_function(&mut self, schema: &str, name: &str, info: FunctionInfo) {
        let name = self.routine_name(name);
        self.functions.insert((schema.to_owned(), name), info);
        self.touch();
    }

    pub fn function(&self, schema: &str, name: &str) -> Option<&FunctionInfo> {
        self.functions.get(&(schema.to_owned(), self.routine_name(name)))
    }

    /// Declare MySQL's rule for routine names: they compare without regard to case (database
    /// names, exactly). Entries already added are kept under their lower-case names.
    pub fn set_routine_names_ignore_case(&mut self) {
        self.routine_names_ignore_case = true;
        self.functions = std::mem::take(&mut self.functions).into_iter().map(|((s, n), i)| ((s, n.to_lowercase()), i)).collect();
        self.touch();
    }

    /// Declare that the server folds database and table names to lower case (MySQL's
    /// `lower_case_table_names` 1 or 2; read `@@lower_case_table_names` at connect).
    pub fn set_table_names_lower_case(&mut self, lower: bool) {
        self.table_names_lower_case = lower;
        self.touch();
    }

    pub fn table_names_lower_case(&self) -> bool {
        self.table_names_lower_case
    }

    fn routine_name(&self, name: &str) -> String {
        if self.routine_names_ignore_case {
            name.to_lowercase()
        } else {
            name.to_owned()
        }
    }

    /// Record that a table exists (for search_path resolution).
    pub fn add_table(&mut self, table: &TableName) {
        self.tables.insert((table.schema.clone(), table.name.clone()));
        self.touch();
    }

    /// Record that a schema exists.
    pub fn add_schema(&mut self, schema: &str) {
        self.schemas.insert(schema.to_owned());
        self.touch();
    }

    /// Whether `schema` exists; `None` when the catalog knows no schemas at all.
    pub fn has_schema(&self, schema: &str) -> Option<bool> {
        (!self.schemas.is_empty()).then(|| self.schemas.contains(schema))
    }

    pub fn has_table(&self, schema: &str, name: &str) -> bool {
        !self.tables.is_empty() && self.tables.contains(&(schema.to_owned(), name.to_owned()))
    }

    /// Record a table's non-deterministic column defaults.
    pub fn set_defaults(&mut self, table: TableName, defaults: Vec<ColumnDefault>) {
        self.defaults.insert(table, defaults);
        self.touch();
    }

    /// The table's columns with sequence, identity or volatile defaults (empty if none or
    /// unknown).
    pub fn defaults(&self, table: &TableName) -> &[ColumnDefault] {
        self.defaults.get(table).map(Vec::as_slice).unwrap_or(&[])
    }
}
