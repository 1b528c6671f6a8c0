//! Everything that talks to Kafka or about it: the ACLs the policy implies.

pub mod acls;
