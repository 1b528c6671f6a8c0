//! Running and operating the hub: configuration, assembly and shutdown, the CLI, the
//! development environment and its PKI.

pub mod app;
pub mod cli;
pub mod config;
pub mod dev;
pub mod pki;
pub mod report;
pub mod tail;
pub mod admin;
pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod telemetry;
