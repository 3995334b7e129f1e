//! Benchmarks of the wire and crypto hot paths. `cargo bench --bench wire_crypto`.
//!
//! Each area keeps its own function and criterion group so they can grow
//! independently; figures and their interpretation are in `BENCHMARKS.md`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pilot::crypto::tunnel::{Session, PILS_HEADER_LEN, PILS_OVERHEAD};

/// A fixed, arbitrary tunnel key and prefixes (the bench does not depend on them).
const KEY: [u8; 32] = [0x42; 32];
const TX_PREFIX: [u8; 4] = [0xa1, 0xa2, 0xa3, 0xa4];
const RX_PREFIX: [u8; 4] = [0xb1, 0xb2, 0xb3, 0xb4];

fn frame_for(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len + PILS_OVERHEAD];
    for (i, b) in f[PILS_HEADER_LEN..PILS_HEADER_LEN + len]
        .iter_mut()
        .enumerate()
    {
        *b = i as u8;
    }
    f
}

/// PILS seal and open (spec §4.6–§4.7) of a payload of `len` bytes: the
/// plaintext here is the whole virtual packet, so `len` is what AES-GCM
/// processes per frame.
fn crypto_pils(c: &mut Criterion) {
    let mut g = c.benchmark_group("pils");
    for len in [1400usize, 4096] {
        g.throughput(Throughput::Bytes(len as u64));

        g.bench_function(format!("seal/{len}"), |b| {
            let mut tx = Session::new(KEY, TX_PREFIX);
            let mut frame = frame_for(len);
            b.iter(|| {
                // Encrypting the previous ciphertext again costs the same.
                black_box(tx.seal_in_place(42, black_box(&mut frame), len)).ok();
            });
        });

        g.bench_function(format!("open/{len}"), |b| {
            let mut tx = Session::new(KEY, TX_PREFIX);
            let mut rx = Session::new(KEY, RX_PREFIX);
            let plain = frame_for(len);
            let now = Instant::now();
            // Every open needs a fresh counter (replays are rejected before
            // decryption), so frames are sealed in the untimed setup.
            b.iter_batched_ref(
                || {
                    let mut f = plain.clone();
                    tx.seal_in_place(42, &mut f, len).ok();
                    f
                },
                |f| {
                    let ok = rx.open_in_place(black_box(f), now).is_ok();
                    assert!(ok);
                },
                BatchSize::SmallInput,
            );
        });
    }

    // Seal then open of the same buffer: the per-frame cost of one packet
    // crossing the tunnel (the goal in BENCHMARKS.md is stated for 1400).
    let len = 1400;
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function(format!("seal+open/{len}"), |b| {
        let mut tx = Session::new(KEY, TX_PREFIX);
        let mut rx = Session::new(KEY, RX_PREFIX);
        let mut frame = frame_for(len);
        let now = Instant::now();
        b.iter(|| {
            let n = tx.seal_in_place(42, &mut frame, len).unwrap_or(0);
            let ok = rx.open_in_place(black_box(&mut frame[..n]), now).is_ok();
            assert!(ok);
        });
    });
    g.finish();
}

/// The two AES-256-GCM candidates alone (no PILS framing or replay state),
/// seal + open of 1400 bytes in place, so that `scripts/bench/crypto.sh` can
/// show in one sitting why `Session` uses `ring` (see `BENCHMARKS.md`).
fn crypto_aead_backends(c: &mut Criterion) {
    use aes_gcm::aead::AeadInPlace;
    use aes_gcm::KeyInit;

    let len = 1400;
    let aad = 42u32.to_be_bytes();
    let mut g = c.benchmark_group("aead_backend");
    g.throughput(Throughput::Bytes(len as u64));

    g.bench_function("aes-gcm/seal+open/1400", |b| {
        let cipher = aes_gcm::Aes256Gcm::new(&KEY.into());
        let mut buf = vec![7u8; len];
        let mut counter = 0u64;
        b.iter(|| {
            counter += 1;
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&counter.to_be_bytes());
            let nonce = aes_gcm::Nonce::from_slice(&n);
            let tag = cipher.encrypt_in_place_detached(nonce, &aad, &mut buf);
            let ok = tag
                .and_then(|t| cipher.decrypt_in_place_detached(nonce, &aad, &mut buf, &t))
                .is_ok();
            assert!(ok);
        });
    });

    g.bench_function("ring/seal+open/1400", |b| {
        use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap());
        let mut buf = vec![7u8; len];
        let mut counter = 0u64;
        b.iter(|| {
            counter += 1;
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&counter.to_be_bytes());
            let tag = key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(aad),
                &mut buf,
            );
            let ok = tag
                .and_then(|t| {
                    key.open_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(aad),
                        t,
                        &mut buf,
                        0..,
                    )
                    .map(|_| ())
                })
                .is_ok();
            assert!(ok);
        });
    });
    g.finish();
}

/// Header parse + CRC check (spec §2.4) and emit, for a full 1,373-byte
/// segment and an empty ACK.
fn wire_header(c: &mut Criterion) {
    use pilot::wire::address::Addr;
    use pilot::wire::header::{emit_packet, parse_packet, Flags, Protocol, Repr};
    let mut g = c.benchmark_group("header");
    for payload_len in [0usize, 1373] {
        let payload = vec![0xA5u8; payload_len];
        let repr = Repr {
            flags: Flags::ACK,
            protocol: Protocol::Stream,
            src: Addr::new(0, 42),
            dst: Addr::new(0, 1000),
            src_port: 49152,
            dst_port: 1000,
            seq: 1,
            ack: 1,
            window: 512,
            payload_len,
        };
        let mut buf = vec![0u8; 34 + payload_len];
        emit_packet(&repr, &payload, &mut buf).unwrap();
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(format!("parse+crc/{payload_len}"), |b| {
            b.iter(|| {
                let (r, p) = parse_packet(std::hint::black_box(&buf)).unwrap();
                std::hint::black_box((r.seq, p.len()))
            })
        });
        let mut out = vec![0u8; buf.len()];
        g.bench_function(format!("emit+crc/{payload_len}"), |b| {
            b.iter(|| emit_packet(std::hint::black_box(&repr), &payload, &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, crypto_pils, crypto_aead_backends, wire_header);
criterion_main!(benches);
