//! Raw UDP echo round-trip times on loopback: the baseline that
//! `scripts/bench/stream.sh` compares the overlay's control ping with.
//!
//! A server thread echoes datagrams; the client sends `COUNT` 8-byte pings
//! one at a time and prints `{"p50_us":..,"p99_us":..,"count":..}`.
//!
//! Usage: `cargo run --release --example udp_rtt [COUNT]`

use std::net::UdpSocket;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let addr = server.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.connect(addr)?;
    let mut rtts = Vec::with_capacity(count);
    let mut buf = [0u8; 2048];
    for i in 0..count + 50 {
        let msg = (i as u64).to_be_bytes();
        let t = Instant::now();
        client.send(&msg)?;
        client.recv(&mut buf)?;
        if i >= 50 {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    rtts.sort_unstable();
    let p = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "{{\"count\":{},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        rtts.len(),
        p(0.50),
        p(0.99)
    );
    Ok(())
}
