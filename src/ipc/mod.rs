//! ipc (placeholder)
