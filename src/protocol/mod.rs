//! Wire protocols, without I/O. Everything here works on byte slices so that it can be unit
//! tested and fuzzed without sockets; the front ends own the sockets.

pub mod postgres;
