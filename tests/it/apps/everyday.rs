//! Everyday application SQL (the workload of tests/it/sync_sql.rs: uuid defaults, serial and
//! identity keys in INSERT … VALUES and INSERT … SELECT, COPY in text, CSV and binary, several
//! statements in one Query, PL/pgSQL functions and DO blocks, a primary-side trigger stamping
//! the clock into another replicated table, upserts, writable CTEs, TRUNCATE, a transaction of
//! 100,000 rows, writes made directly on the primary) in every mode, sync first (see
//! [`Site`]).

use super::{fresh, Mode, Site};
use crate::replication::bed;
use crate::support::connect;
use crate::sync_sql::{everyday_workload, PRIMARY_ONLY, SCHEMA, TABLES};

/// The workload in `mode`, on a new origin, ending with `capgate verify`.
async fn everyday(mode: Mode) {
    fresh(SCHEMA).await;
    connect(&bed().a_primary_url()).await.batch_execute(PRIMARY_ONLY).await.unwrap();
    let site = Site::start("ap_everyday", mode, "public.ss_*").await;
    everyday_workload(&site.url(), &bed().a_primary_url()).await;
    site.verify_equal(TABLES).await;
}

#[tokio::test]
async fn everyday_sql_in_every_mode_leaves_both_sites_identical() {
    let _one = crate::replication::exclusive().await;
    for mode in [Mode::Sync, Mode::Async, Mode::Bounded] {
        everyday(mode).await;
    }
}
