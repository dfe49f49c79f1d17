//! End-to-end tests of the real `outpost-node` and `outpost-relay` binaries.
//!
//! The tests live in the `it` target (`tests/it/`, one module per scenario) and drive the
//! processes with the `simulator` crate's harness. Build the binaries first:
//! `cargo build --workspace --bins && cargo nextest run -p tests`.
