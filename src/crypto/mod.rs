//! crypto (placeholder)
