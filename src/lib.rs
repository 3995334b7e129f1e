//! Pilot Protocol v1 in Rust.
//!
//! A userspace overlay network: every node has an Ed25519 identity and a
//! 48-bit virtual address, reaches its peers over encrypted UDP tunnels
//! (direct, hole-punched, or relayed), and carries reliable streams,
//! datagrams and control pings between virtual ports.
//!
//! The crate is layered so that protocol logic never touches I/O:
//!
//! * [`wire`], [`crypto`], [`stream`]: sans-IO cores. They take bytes and an
//!   `Instant` and return bytes and events; no tokio, no sockets, no clock.
//! * [`node`], [`rendezvous`], [`ipc`], [`cli`]: the tokio shells that
//!   drive the cores with real sockets and timers.
//!
//! * [`gateway`]: the TUN + smoltcp gateway, a client of the daemon's IPC.
//!
//! Arrows point down: `bin -> cli/node/rendezvous/gateway -> ipc -> stream/crypto -> wire`.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod cli;
pub mod config;
pub mod crypto;
pub mod gateway;
pub mod iobuf;
pub mod ipc;
pub mod metrics_http;
pub mod node;
pub mod ratelimit;
pub mod rendezvous;
pub mod stream;
pub mod wire;

/// `VERSION (commit HASH)`: what every binary's `--version` prints; the
/// commit is stamped by build.rs.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PILOT_GIT_COMMIT"),
    ")"
);
