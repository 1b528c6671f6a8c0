//! The Tabadol hub.
