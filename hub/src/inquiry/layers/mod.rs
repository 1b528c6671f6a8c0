//! The layers of the inquiry path, each a small unit tested alone. They are composed in
//! one place, [`Hub::inquire`](crate::inquiry::pipeline::Hub::inquire), in this order:
//! authenticate → audit guard → validate → authorize → condition → maintenance → limit → provider
//! call (timeout; the adapter's circuit breaker) → minimize.

pub mod authorize;
pub mod call;
pub mod condition;
pub mod guard;
pub mod limit;
pub mod maintenance;
pub mod minimize;
pub mod validate;
