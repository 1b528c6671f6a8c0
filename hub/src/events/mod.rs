//! The event path (R5): event model and validation, the durable outbox, per-subscriber
//! tokens, the Kafka relay and the daily manifests.

pub mod dataset_relay;
pub mod datasets;
pub mod manifests;
pub mod model;
pub mod outbox;
pub mod relay;
pub mod tokens;
