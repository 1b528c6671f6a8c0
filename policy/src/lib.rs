//! Policy model, YAML loader, validation and decision engine of the Tabadol hub.
//!
//! The working group's policy lives in four YAML files (see `national/README.md`). The hub
//! calls [`Policy::load_dir`] at start and on reload, keeps the last good [`Policy`] when
//! loading fails (every problem is reported as `file:line:column`), and asks
//! [`Policy::decide`] on every inquiry. No protobuf or gRPC types live here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod engine;
pub mod http_mapping;
pub mod ids;
pub mod jalali;
pub mod load;
pub mod model;
pub mod signatures;
mod yaml;

pub use engine::{Decision, DecisionRequest, Deny, Policy};
pub use load::{PolicyError, PolicyErrors};
