//! Front ends: where applications connect. Each speaks one wire protocol to clients and
//! relays their sessions to the site's primary. Sessions run on the [`workers`] threads.

pub mod postgres;
pub mod workers;
