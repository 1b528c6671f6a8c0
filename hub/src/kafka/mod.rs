//! Everything that talks to Kafka or about it: the hub's clients (producer, admin), topic
//! creation, CloudEvents headers, failure classification and operator alerts (shared by
//! the relay and the daily manifests), and the ACLs the policy implies.

pub mod acls;
pub mod admin;
pub mod cloudevents;
pub mod failure;
pub mod producer;
