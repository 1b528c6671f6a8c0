//! Policy model, loader and decision engine.
