//! Shared helpers for the example agency backends.
