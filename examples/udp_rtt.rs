//! Raw UDP echo round-trip times on loopback: the baseline that
//! `scripts/bench/stream.sh` compares the overlay's control ping with.
//!
//! A server thread echoes datagrams; the client sends `COUNT` 8-byte pings
//! one at a time, `INTERVAL_US` microseconds apart (default 0: back to
//! back), and prints `{"p50_us":..,"p99_us":..,"count":..}`.
//!
//! The interval matters: pings a millisecond apart let both threads go to
//! sleep between them, so each one pays two wake-ups that back-to-back
//! pings do not. `stream.sh` runs this with the same interval as the
//! overlay ping it compares against, and back to back as well.
//!
//! With `UDP_RTT_PROCESS=1` the echo runs in a child process instead of a
//! thread, as the two daemons of an overlay ping do: then every wake-up
//! also switches address spaces, which costs far more on some virtual
//! machines (BENCHMARKS.md, issue 14, "Latency on a nested VM").
//!
//! Usage: `cargo run --release --example udp_rtt [COUNT [INTERVAL_US]]`

use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--echo") {
        // The child of UDP_RTT_PROCESS: print the port, echo until killed.
        let server = UdpSocket::bind("127.0.0.1:0")?;
        println!("{}", server.local_addr()?.port());
        echo(server);
        return Ok(());
    }
    let arg = |i: usize| std::env::args().nth(i).and_then(|s| s.parse::<u64>().ok());
    let count = arg(1).unwrap_or(1000) as usize;
    let interval = Duration::from_micros(arg(2).unwrap_or(0));
    let mut child = None;
    let addr = if std::env::var_os("UDP_RTT_PROCESS").is_some() {
        let mut c = std::process::Command::new(std::env::current_exe()?)
            .arg("--echo")
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(c.stdout.take().expect("piped")),
            &mut line,
        )?;
        child = Some(c);
        let port: u16 = line.trim().parse().map_err(std::io::Error::other)?;
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        let server = UdpSocket::bind("127.0.0.1:0")?;
        let addr = server.local_addr()?;
        std::thread::spawn(move || echo(server));
        addr
    };
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
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
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

/// Sends every datagram back to where it came from.
fn echo(server: UdpSocket) {
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = server.recv_from(&mut buf) {
        let _ = server.send_to(&buf[..n], from);
    }
}
