//! The spec's crypto test vectors (`tests/vectors/*.json`, spec Appendix A),
//! read from disk, plus property tests of the PILS session.
//!
//! Covered: `tunnel_crypto.json` (X25519, HKDF, PILA, PILS, checks),
//! `replay_window.json`, `registry.json` → `signatures`, and
//! `trust_handshake.json` → `identity_file` and message signatures.

use std::time::{Duration, Instant};

use pilot::crypto::identity::{self, decode_public_key_b64, decode_signature_b64, Identity};
use pilot::crypto::tunnel::{
    auth_message, derive_tunnel_key, hkdf_prk, sign_auth, tunnel_key_from_prk, verify_auth,
    CryptoError, KeyPair, ReplayError, ReplayWindow, Session, PILS_OVERHEAD,
};
use proptest::prelude::*;
use serde_json::Value;

fn vector(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex_n<const N: usize>(v: &Value) -> [u8; N] {
    let bytes = hex::decode(v.as_str().expect("hex string")).expect("valid hex");
    bytes.try_into().expect("length")
}

fn hex_vec(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn str_of(v: &Value) -> &str {
    v.as_str().expect("string")
}

struct Node {
    id: u32,
    identity: Identity,
    x25519: KeyPair,
}

fn node(tc: &Value, which: &str) -> Node {
    let n = &tc[which];
    let identity = Identity::from_seed(hex_n(&n["ed25519_seed_hex"]));
    assert_eq!(identity.public_key(), hex_n::<32>(&n["ed25519_public_hex"]));
    assert_eq!(identity.public_key_b64(), str_of(&n["ed25519_public_b64"]));
    let x25519 = KeyPair::from_secret(hex_n(&n["x25519_private_hex"]));
    assert_eq!(x25519.public(), hex_n::<32>(&n["x25519_public_hex"]));
    Node {
        id: n["node_id"].as_u64().expect("node id") as u32,
        identity,
        x25519,
    }
}

#[test]
fn tunnel_key_agreement() {
    let tc = vector("tunnel_crypto.json");
    let (a, b) = (node(&tc, "node_a"), node(&tc, "node_b"));
    let shared: [u8; 32] = hex_n(&tc["x25519_shared_secret_hex"]);
    assert_eq!(a.x25519.shared_secret(&b.x25519.public()).unwrap(), shared);
    assert_eq!(b.x25519.shared_secret(&a.x25519.public()).unwrap(), shared);

    let h = &tc["hkdf"];
    assert_eq!(
        str_of(&h["info_ascii"]).as_bytes(),
        pilot::crypto::tunnel::HKDF_INFO
    );
    assert_eq!(str_of(&h["salt_hex"]), "");
    assert_eq!(h["okm_len"].as_u64(), Some(32));
    let prk: [u8; 32] = hex_n(&h["prk_hex"]);
    assert_eq!(hkdf_prk(&shared), prk);
    let key: [u8; 32] = hex_n(&h["aes256_key_hex"]);
    assert_eq!(tunnel_key_from_prk(&prk), key);
    assert_eq!(
        derive_tunnel_key(&a.x25519, &b.x25519.public()).unwrap(),
        key
    );
    assert_eq!(
        derive_tunnel_key(&b.x25519, &a.x25519.public()).unwrap(),
        key
    );
}

/// PILA frame bytes (§4.2), built here from the parts; `wire::frame` owns the
/// real codec.
fn pila_frame(n: &Node) -> Vec<u8> {
    let sig = sign_auth(&n.identity, n.id, &n.x25519.public());
    [
        &b"PILA"[..],
        &n.id.to_be_bytes(),
        &n.x25519.public(),
        &n.identity.public_key(),
        &sig,
    ]
    .concat()
}

#[test]
fn pila_signatures_and_frames() {
    let tc = vector("tunnel_crypto.json");
    let (a, b) = (node(&tc, "node_a"), node(&tc, "node_b"));
    let p = &tc["pila_a"];
    let msg = auth_message(a.id, &a.x25519.public());
    assert_eq!(msg.to_vec(), hex_vec(&p["signed_message_hex"]));
    let sig: [u8; 64] = hex_n(&p["signature_hex"]);
    assert_eq!(sign_auth(&a.identity, a.id, &a.x25519.public()), sig);
    assert!(verify_auth(
        &a.identity.public_key(),
        a.id,
        &a.x25519.public(),
        &sig
    ));
    assert!(!verify_auth(
        &b.identity.public_key(),
        a.id,
        &a.x25519.public(),
        &sig
    ));
    assert!(!verify_auth(
        &a.identity.public_key(),
        b.id,
        &a.x25519.public(),
        &sig
    ));
    let frame = pila_frame(&a);
    assert_eq!(frame.len() as u64, p["frame_len"].as_u64().unwrap());
    assert_eq!(frame, hex_vec(&p["frame_hex"]));

    // B's PILA, captured from the reference answering A's: byte-exact too,
    // and its signature verifies with B's key.
    let fb = hex_vec(&tc["pila_b"]["frame_hex"]);
    assert_eq!(pila_frame(&b), fb);
    let sig_b: [u8; 64] = fb[72..136].try_into().unwrap();
    assert!(verify_auth(
        &b.identity.public_key(),
        b.id,
        &b.x25519.public(),
        &sig_b
    ));

    // PILK (§4.2) is just magic ‖ id ‖ X25519 key; check our reading of it.
    let pilk = hex_vec(&tc["pilk_a"]["frame_hex"]);
    assert_eq!(
        pilk,
        [&b"PILK"[..], &a.id.to_be_bytes(), &a.x25519.public()].concat()
    );
}

#[test]
fn pils_frames_seal_byte_exact_and_open() {
    let tc = vector("tunnel_crypto.json");
    let key: [u8; 32] = hex_n(&tc["hkdf"]["aes256_key_hex"]);
    let frames = tc["pils"].as_array().expect("pils array");
    assert_eq!(frames.len(), 3);
    let t = Instant::now();
    // Receivers: B receives A's frames, A receives B's.
    let mut rx_b = Session::new(key, [0xee; 4]);
    let mut rx_a = Session::new(key, [0xdd; 4]);
    let mut senders: Vec<([u8; 4], Session)> = Vec::new();
    for f in frames {
        let prefix: [u8; 4] = hex_n(&f["nonce_prefix_hex"]);
        let counter = f["counter"].as_u64().unwrap();
        let sender_id = f["sender_node_id"].as_u64().unwrap() as u32;
        let plaintext = hex_vec(&f["plaintext_hex"]);
        let expected = hex_vec(&f["frame_hex"]);
        assert_eq!(hex_vec(&f["aad_hex"]), sender_id.to_be_bytes());
        let mut nonce = prefix.to_vec();
        nonce.extend_from_slice(&counter.to_be_bytes());
        assert_eq!(hex_vec(&f["nonce_hex"]), nonce);

        // One sending session per prefix, used in vector order, so the
        // counters come out as 1, 2 (A) and 1 (B).
        let idx = match senders.iter().position(|(p, _)| *p == prefix) {
            Some(i) => i,
            None => {
                senders.push((prefix, Session::new(key, prefix)));
                senders.len() - 1
            }
        };
        let tx = &mut senders[idx].1;
        assert_eq!(tx.next_send_counter(), Some(counter));
        let mut buf = vec![0u8; 20 + plaintext.len() + 16];
        buf[20..20 + plaintext.len()].copy_from_slice(&plaintext);
        let n = tx
            .seal_in_place(sender_id, &mut buf, plaintext.len())
            .unwrap();
        assert_eq!(n, plaintext.len() + PILS_OVERHEAD);
        assert_eq!(buf, expected, "{}", f["name"]);
        assert_eq!(buf[20..], hex_vec(&f["ciphertext_and_tag_hex"])[..]);

        let rx = if sender_id == 42 {
            &mut rx_b
        } else {
            &mut rx_a
        };
        let mut wire = expected.clone();
        assert_eq!(rx.open_in_place(&mut wire, t).unwrap(), &plaintext[..]);
    }

    // checks: frames 1 and 2 accepted (above); replayed frame 1 rejected;
    // altered sender id rejected.
    let checks = &tc["checks"];
    assert_eq!(checks["receiver_accepts_frames_1_and_2"], Value::Bool(true));
    assert_eq!(
        checks["receiver_rejects_replayed_frame_1"],
        Value::Bool(true)
    );
    let mut replay = hex_vec(&frames[0]["frame_hex"]);
    assert_eq!(
        rx_b.open_in_place(&mut replay, t),
        Err(CryptoError::Replayed { counter: 1 })
    );
    assert_eq!(
        checks["receiver_rejects_frame_with_altered_sender_id"],
        Value::Bool(true)
    );
    // A fresh receiver (no replay state), so only the AAD can fail it.
    let mut fresh = Session::new(key, [0xcc; 4]);
    let mut altered = hex_vec(&frames[1]["frame_hex"]);
    altered[7] ^= 0x01;
    assert_eq!(
        fresh.open_in_place(&mut altered, t),
        Err(CryptoError::AuthFailed)
    );
    let mut genuine = hex_vec(&frames[1]["frame_hex"]);
    assert!(fresh.open_in_place(&mut genuine, t).is_ok());
}

#[test]
fn replay_window_reference_sequence() {
    let rw = vector("replay_window.json");
    assert_eq!(
        rw["window_size"].as_u64(),
        Some(pilot::crypto::tunnel::WINDOW_SIZE)
    );
    let mut w = ReplayWindow::new();
    for (i, step) in rw["sequence"].as_array().unwrap().iter().enumerate() {
        let c = step["counter"].as_u64().unwrap();
        let accepted = step["accepted"].as_bool().unwrap();
        let result = w.check(c);
        assert_eq!(result.is_ok(), accepted, "step {i}: counter {c}");
        if result.is_ok() {
            w.commit(c);
        }
        assert_eq!(w.max(), step["max_after"].as_u64().unwrap(), "step {i}");
    }
}

/// The reference accepts counter 0 any number of times while nothing else
/// has been seen. We deliberately reject counter 0 (no sender may use it,
/// §4.6); every non-zero step behaves as in the reference.
#[test]
fn replay_window_counter_zero_quirk_deliberately_not_copied() {
    let rw = vector("replay_window.json");
    let mut w = ReplayWindow::new();
    for step in rw["counter_zero_quirk"]["sequence"].as_array().unwrap() {
        let c = step["counter"].as_u64().unwrap();
        let reference = step["accepted"].as_bool().unwrap();
        let ours = w.accept(c);
        if c == 0 {
            assert!(reference, "the quirk: reference accepts counter 0");
            assert_eq!(ours, Err(ReplayError::Replayed));
        } else {
            assert_eq!(ours.is_ok(), reference, "counter {c}");
        }
    }
}

#[test]
fn registry_signatures() {
    let reg = vector("registry.json");
    let signer = &reg["signer"];
    let id = Identity::from_seed(hex_n(&signer["ed25519_seed_hex"]));
    assert_eq!(id.public_key_b64(), str_of(&signer["public_key_b64"]));
    let pk = decode_public_key_b64(str_of(&signer["public_key_b64"])).unwrap();
    let sigs = reg["signatures"].as_array().unwrap();
    assert!(sigs.len() >= 20);
    for s in sigs {
        let msg = str_of(&s["signed_string"]).as_bytes();
        let expected = str_of(&s["signature_b64"]);
        assert_eq!(id.sign_b64(msg), expected, "{}", s["operation"]);
        let sig = decode_signature_b64(expected).unwrap();
        assert!(identity::verify(&pk, msg, &sig));
        assert!(!identity::verify(&pk, b"heartbeat:0", &sig));
    }
}

#[test]
fn identity_file_round_trip_byte_exact() {
    let th = vector("trust_handshake.json");
    let content = str_of(&th["identity_file"]["content"]);
    let id = Identity::from_json(content).unwrap();
    assert_eq!(id.to_json(), content);
    let tc = vector("tunnel_crypto.json");
    assert_eq!(id.seed(), hex_n::<32>(&tc["node_a"]["ed25519_seed_hex"]));

    // Through a real file too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.json");
    id.save(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    assert_eq!(Identity::load(&path).unwrap(), id);

    // A file whose stored public key does not match is refused, naming the file.
    let other = Identity::from_seed([0x55; 32]).public_key_b64();
    let bad = content.replace(&id.public_key_b64(), &other);
    std::fs::write(&path, bad).unwrap();
    let err = Identity::load(&path).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("does not derive"),
        "{err}"
    );
}

#[test]
fn trust_handshake_signatures() {
    let th = vector("trust_handshake.json");
    let content = str_of(&th["identity_file"]["content"]);
    let id = Identity::from_json(content).unwrap();
    let receiver = th["receiver_node_id"].as_u64().unwrap();
    let msgs = th["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    for m in msgs {
        let signed = str_of(&m["signed_string"]);
        assert_eq!(signed, format!("handshake:42:{receiver}"));
        assert_eq!(id.sign_b64(signed.as_bytes()), str_of(&m["signature_b64"]));
    }
    let relay = &th["registry_relay_respond_signature"];
    assert_eq!(
        id.sign_b64(str_of(&relay["signed_string"]).as_bytes()),
        str_of(&relay["signature_b64"])
    );
}

// ---------------------------------------------------------------------------
// Property tests of the PILS session.

const KEY: [u8; 32] = [0x5a; 32];

fn sealed(tx: &mut Session, sender: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; payload.len() + PILS_OVERHEAD];
    buf[20..20 + payload.len()].copy_from_slice(payload);
    let n = tx.seal_in_place(sender, &mut buf, payload.len()).unwrap();
    assert_eq!(n, buf.len());
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn seal_open_round_trip(
        key in any::<[u8; 32]>(),
        prefix in any::<[u8; 4]>(),
        start in 1u64..=u64::MAX - 4,
        sender in any::<u32>(),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1500), 1..4),
    ) {
        let mut tx = Session::with_next_counter(key, prefix, start);
        let rx_prefix = prefix.map(|b| !b);
        let mut rx = Session::new(key, rx_prefix);
        let t = Instant::now();
        for (i, p) in payloads.iter().enumerate() {
            let mut f = sealed(&mut tx, sender, p);
            prop_assert_eq!(&f[12..20], &(start + i as u64).to_be_bytes());
            prop_assert_eq!(rx.open_in_place(&mut f, t).unwrap(), &p[..]);
        }
    }

    #[test]
    fn any_bit_flip_is_rejected(
        payload in prop::collection::vec(any::<u8>(), 0..600),
        bit in any::<prop::sample::Index>(),
    ) {
        let mut tx = Session::new(KEY, [1, 2, 3, 4]);
        let f = sealed(&mut tx, 42, &payload);
        let bit = bit.index(f.len() * 8);
        let mut g = f.clone();
        g[bit / 8] ^= 1 << (bit % 8);
        let mut rx = Session::new(KEY, [9; 4]);
        let r = rx.open_in_place(&mut g, Instant::now());
        prop_assert!(r.is_err(), "flip of bit {} accepted", bit);
        // The original still opens afterwards: the failure recorded nothing.
        let mut f2 = f.clone();
        prop_assert_eq!(rx.open_in_place(&mut f2, Instant::now()).unwrap(), &payload[..]);
    }

    #[test]
    fn reordering_within_the_window_accepted_exactly_once(
        order in Just((0..200usize).collect::<Vec<_>>()).prop_shuffle(),
        dups in prop::collection::vec(0..200usize, 0..50),
    ) {
        let mut tx = Session::new(KEY, [7; 4]);
        let frames: Vec<Vec<u8>> = (0..200u32).map(|i| sealed(&mut tx, 1, &i.to_be_bytes())).collect();
        let mut rx = Session::new(KEY, [8; 4]);
        let t = Instant::now();
        for &i in &order {
            let mut f = frames[i].clone();
            prop_assert_eq!(rx.open_in_place(&mut f, t).unwrap(), &(i as u32).to_be_bytes());
        }
        for &i in &dups {
            let mut f = frames[i].clone();
            prop_assert_eq!(
                rx.open_in_place(&mut f, t),
                Err(CryptoError::Replayed { counter: i as u64 + 1 })
            );
        }
    }

    #[test]
    fn window_matches_a_model(ops in prop::collection::vec(0u64..700, 1..300)) {
        // Model: a set of seen counters and the maximum, as in §4.7, with
        // counter 0 counted as seen from the start.
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::from([0u64]);
        let mut max = 0u64;
        for c in ops {
            let expect = if c > max {
                Ok(())
            } else if max - c >= 256 {
                Err(ReplayError::TooOld)
            } else if seen.contains(&c) {
                Err(ReplayError::Replayed)
            } else {
                Ok(())
            };
            prop_assert_eq!(w.accept(c), expect);
            if expect.is_ok() {
                seen.insert(c);
                max = max.max(c);
            }
        }
    }
}

#[test]
fn prefix_switch_with_vector_key() {
    // A reference peer that re-derives its session restarts at counter 1 with a
    // new prefix: accepted, and the old prefix is retired after the grace.
    let key: [u8; 32] = hex_n(&vector("tunnel_crypto.json")["hkdf"]["aes256_key_hex"]);
    let mut rx = Session::new(key, [0xb1, 0xb2, 0xb3, 0xb4]);
    let t = Instant::now();
    let mut first = Session::new(key, [0xa1, 0xa2, 0xa3, 0xa4]);
    let mut f = sealed(&mut first, 42, b"x");
    rx.open_in_place(&mut f, t).unwrap();
    let mut late = sealed(&mut first, 42, b"late");
    let mut second = Session::new(key, [0xa5, 0xa6, 0xa7, 0xa8]);
    let mut f = sealed(&mut second, 42, b"y");
    rx.open_in_place(&mut f, t).unwrap();
    assert!(matches!(
        rx.open_in_place(&mut late, t + Duration::from_secs(6)),
        Err(CryptoError::RetiredPrefix { .. })
    ));
}
