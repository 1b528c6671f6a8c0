//! Benchmarks of the Tabadol hub live in this crate; see the bench targets.
