//! Provider adapters and simulators.
