//! Running and operating the hub: configuration, assembly and shutdown, the CLI, the
//! development environment and its PKI.

pub mod admin;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod dev;
pub mod diff;
pub mod explain;
pub mod health;
pub mod metrics;
pub mod pki;
pub mod report;
pub mod requests;
pub mod signed;
pub mod tail;
pub mod telemetry;
