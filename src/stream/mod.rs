//! stream (placeholder)
