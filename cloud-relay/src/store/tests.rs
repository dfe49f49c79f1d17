//! Tests of the relay store.
