//! Tests of the PKI commands.
