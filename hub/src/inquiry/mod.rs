//! The inquiry path: the pipeline of layers every inquiry runs through, and the audit log.

pub mod audit;
pub mod checkpoint;
pub mod layers;
pub mod pipeline;
pub mod requests;
