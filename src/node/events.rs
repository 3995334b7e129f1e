//! Event stream (port 1002).
use super::engine::Cmd;
use tokio::sync::mpsc;
/// Starts the broker.
pub async fn start(_cmds: &mpsc::Sender<Cmd>) {}
