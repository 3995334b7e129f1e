//! Data exchange (port 1001).
use super::engine::Cmd;
use tokio::sync::mpsc;
/// Starts the service.
pub async fn start(_cmds: &mpsc::Sender<Cmd>, _dir: std::path::PathBuf, _quota: u64) {}
/// IPC `inbox`/`received`.
pub fn mailbox(
    _shared: &super::Shared,
    _which: &str,
    _clear: bool,
    _from: Option<&str>,
) -> crate::ipc::Response {
    crate::ipc::Response::error(crate::ipc::ErrorCode::Internal, "todo")
}
