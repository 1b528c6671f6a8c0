//! Running and operating the hub: configuration, assembly and shutdown, the CLI, the
//! development environment and its PKI.

pub mod app;
pub mod cli;
pub mod config;
pub mod dev;
pub mod diff;
pub mod explain;
pub mod pki;
pub mod requests;
pub mod signed;
