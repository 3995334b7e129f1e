//! Byte formats of Pilot Protocol v1 (`pilot-v1.md`), and nothing else.
//!
//! Every format follows smoltcp's pattern: a zero-copy `Packet<T: AsRef<[u8]>>`
//! view whose accessors cannot panic once `check_len` has passed, and a `Repr`
//! with `parse` / `emit` / `buffer_len`. JSON formats are serde types. No
//! input, however malformed, may panic: every parser has a fuzz target under
//! `fuzz/`.

pub mod address;
pub mod beacon;
pub mod dataexchange;
pub mod frame;
pub mod header;
pub mod networks;
pub mod registry;
pub mod sack;
pub mod trust;
