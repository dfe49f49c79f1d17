//! Integration tests of the protocol core, in one binary: a sender and a receiver over a
//! lossy in-memory network, the sans-IO dependency rule, and the tidy checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pair;
mod sans_io;
mod tidy;
