//! The `/metrics` responder the rendezvous and the daemon share (issue 13):
//! `--metrics ADDR` on either binary serves OpenMetrics text there.
//!
//! A few lines on tokio rather than a web framework (one endpoint, no
//! routing, no keep-alive): one `GET /metrics` per connection, a 5 s
//! deadline, a small request cap and at most [`MAX_SCRAPERS`] connections
//! at once, so a hostile client cannot hold more than that.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Concurrent `/metrics` connections (ours; a scraper needs one).
pub const MAX_SCRAPERS: usize = 16;
/// Longest time to read a request and write the reply (ours).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read (ours; a GET with headers is far smaller).
const MAX_REQUEST: usize = 8 * 1024;
/// The content type of OpenMetrics text (OpenMetrics 1.0 §"Overall Structure").
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the responder serves: the current metrics text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `stop` becomes true.
pub async fn serve(listener: TcpListener, render: Render, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: too many scrapers at once
        };
        let render = render.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(SCRAPE_TIMEOUT, answer(sock, &render))
                .await
                .is_err()
            {
                tracing::debug!(%peer, "metrics request timed out");
            }
            drop(permit);
        });
    }
}

/// The status line and body for one request head.
fn respond(head: &[u8], render: &Render) -> (&'static str, String) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    match (method, target) {
        (Some("GET"), Some(t)) if t == "/metrics" || t.starts_with("/metrics?") => {
            ("200 OK", render())
        }
        (Some("GET"), Some(_)) => ("404 Not Found", "not found; try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "only GET /metrics\n".into()),
    }
}

async fn answer(mut sock: TcpStream, render: &Render) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST {
            break;
        }
    }
    let (status, body) = respond(&head, render);
    let ctype = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(reply.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let r: Render = Arc::new(|| "x".to_string());
        assert_eq!(respond(b"GET /metrics HTTP/1.1\r\n\r\n", &r).0, "200 OK");
        assert_eq!(
            respond(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", &r).0,
            "200 OK"
        );
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", &r).0, "404 Not Found");
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", &r).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond(b"\xff\xfe", &r).0, "405 Method Not Allowed");
    }
}
