//! Opens N streams through a daemon's IPC socket to a peer's echo port,
//! exchanges one small message on each, and holds them all open until
//! stdin closes. `scripts/bench/stream.sh` reads the daemons' RSS meanwhile.
//!
//! Usage: `hold_streams SOCKET TARGET N` (prints `ready N` when all are open)

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(target), Some(n)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: hold_streams SOCKET TARGET N");
        std::process::exit(2);
    };
    let socket = PathBuf::from(socket);
    let n: usize = n.parse().expect("N");
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let socket = socket.clone();
        let target = target.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let mut c = pilot::ipc::Client::connect(&socket).await.ok()?;
            let req = pilot::ipc::Request::Dial {
                target,
                port: 7,
                timeout_ms: 30_000,
            };
            c.request(&req, Duration::from_secs(60)).await.ok()?;
            let mut s = c.into_stream();
            let msg = format!("stream-{i}");
            s.write_all(msg.as_bytes()).await.ok()?;
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.ok()?;
            (back == msg.as_bytes()).then_some(s)
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            held.push(s);
        }
    }
    println!("ready {}", held.len());
    let mut line = String::new();
    let _ = tokio::io::AsyncBufReadExt::read_line(
        &mut tokio::io::BufReader::new(tokio::io::stdin()),
        &mut line,
    )
    .await;
    drop(held);
}
