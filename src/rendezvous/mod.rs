//! rendezvous (placeholder)
