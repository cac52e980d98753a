//! capgate's connections to database servers: the primary each session is relayed to, and the
//! replicas of other sites. One module per protocol.

pub mod checks;
pub mod mysql;
pub mod mysql_checks;
pub mod postgres;
pub mod postgres_catalog;
pub mod postgres_checks;
