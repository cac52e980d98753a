//! Front ends: where applications connect. Each speaks one wire protocol to clients and
//! relays their sessions to the site's primary. `capgate run` starts the one the primary URL's
//! scheme names. Sessions run on the [`workers`] threads.

pub mod limits;
pub mod listener;
pub mod memory;
pub mod mysql;
pub mod postgres;
pub mod workers;
