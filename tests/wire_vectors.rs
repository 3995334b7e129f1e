//! Checks every wire-format example of `tests/vectors/*.json` (copied from the
//! spec's `vectors/`) against `pilot::wire`: parse, emit, accept/reject with
//! the reference error text. The vectors are read from disk, never retyped.

use pilot::wire::address::{parse_target, Addr, SockAddr, Target};
use pilot::wire::header::{self, Flags, Packet, Protocol, Repr};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("missing array {key}"))
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing string {key} in {v}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("missing number {key} in {v}"))
}

fn hx(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(s(v, key)).unwrap_or_else(|e| panic!("bad hex {key}: {e}"))
}

// ---------------------------------------------------------------- address

#[test]
fn address_parse_valid() {
    let d = load("address.json");
    let cases = arr(&d, "parse_valid");
    assert!(!cases.is_empty());
    for c in cases {
        let a: Addr = s(c, "text").parse().unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(u64::from(a.network), u(c, "network"), "{c}");
        assert_eq!(u64::from(a.node), u(c, "node"), "{c}");
        assert_eq!(a.to_string(), s(c, "canonical_text"));
        assert_eq!(a.to_bytes().to_vec(), hx(c, "binary_hex"));
        assert_eq!(a.is_broadcast(), c["is_broadcast"].as_bool().unwrap());
        let six: [u8; 6] = hx(c, "binary_hex").try_into().unwrap();
        assert_eq!(Addr::from_bytes(six), a);
    }
}

#[test]
fn address_parse_invalid_with_reference_text() {
    let d = load("address.json");
    let cases = arr(&d, "parse_invalid");
    assert!(!cases.is_empty());
    for c in cases {
        let e = s(c, "text")
            .parse::<Addr>()
            .expect_err(&format!("{c} must fail"));
        assert_eq!(e.to_string(), s(c, "reference_error"), "{c}");
    }
}

#[test]
fn address_format() {
    let d = load("address.json");
    for c in arr(&d, "format") {
        let a = Addr::new(u(c, "network") as u16, u(c, "node") as u32);
        assert_eq!(a.to_string(), s(c, "text"));
        assert_eq!(a.to_bytes().to_vec(), hx(c, "binary_hex"));
        assert_eq!(s(c, "text").parse::<Addr>().unwrap(), a);
    }
}

#[test]
fn socket_addresses() {
    let d = load("address.json");
    for c in arr(&d, "socket_valid") {
        let sa: SockAddr = s(c, "text").parse().unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(u64::from(sa.addr.network), u(c, "network"));
        assert_eq!(u64::from(sa.addr.node), u(c, "node"));
        assert_eq!(u64::from(sa.port), u(c, "port"));
        assert_eq!(sa.to_string(), s(c, "canonical_text"));
    }
    for c in arr(&d, "socket_invalid") {
        let e = s(c, "text")
            .parse::<SockAddr>()
            .expect_err(&format!("{c} must fail"));
        assert_eq!(e.to_string(), s(c, "reference_error"), "{c}");
    }
}

#[test]
fn bare_node_id_targets() {
    let d = load("address.json");
    for c in arr(&d, "bare_node_id") {
        let text = s(c, "text");
        let t = parse_target(text);
        if c.get("canonical_text").is_some() {
            let Ok(Target::Addr(a)) = t else {
                panic!("{c}: {t:?}")
            };
            assert_eq!(a.to_string(), s(c, "canonical_text"));
            assert_eq!(u64::from(a.node), u(c, "node"));
            assert_eq!(u64::from(a.network), u(c, "network"));
        } else {
            // Not a node id: it must not become an address. Whether it is a
            // valid hostname is a separate question (§6.4.5).
            assert!(!matches!(t, Ok(Target::Addr(_))), "{c}: {t:?}");
            if parse_target(text).is_ok() {
                assert_eq!(t, Ok(Target::Hostname(text.to_owned())));
            }
        }
    }
}

// ---------------------------------------------------------------- header

fn repr_from_fields(f: &Value) -> (Repr, Vec<u8>) {
    let payload = hx(f, "payload_hex");
    let repr = Repr {
        flags: Flags::from_bits_truncate(u(f, "flags") as u8),
        protocol: Protocol::from(u(f, "protocol") as u8),
        src: s(f, "src").parse().unwrap(),
        dst: s(f, "dst").parse().unwrap(),
        src_port: u(f, "src_port") as u16,
        dst_port: u(f, "dst_port") as u16,
        seq: u(f, "seq") as u32,
        ack: u(f, "ack") as u32,
        window: u(f, "window") as u16,
        payload_len: payload.len(),
    };
    (repr, payload)
}

#[test]
fn header_encode() {
    let d = load("header.json");
    let cases = arr(&d, "encode");
    assert_eq!(cases.len(), 12);
    for c in cases {
        let f = &c["fields"];
        assert_eq!(u(f, "version"), u64::from(header::VERSION));
        let (repr, payload) = repr_from_fields(f);
        let wire = hx(c, "wire_hex");

        // Emit through the Packet view (payload placed first, then emit).
        let mut buf = vec![0u8; repr.buffer_len()];
        buf[header::HEADER_LEN..].copy_from_slice(&payload);
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, wire, "{}", s(c, "name"));
        assert_eq!(
            buf[..header::HEADER_LEN].to_vec(),
            hx(c, "header_hex"),
            "{}",
            s(c, "name")
        );

        // And through the convenience function.
        assert_eq!(header::packet_to_vec(&repr, &payload).unwrap(), wire);

        // CRC input and value.
        let p = Packet::new_checked(&wire[..]).unwrap();
        assert_eq!(format!("{:08x}", p.checksum()), s(c, "crc32"));
        assert_eq!(format!("{:08x}", p.compute_checksum()), s(c, "crc32"));
        let mut crc_input = wire.clone();
        crc_input[30..34].fill(0);
        assert_eq!(crc_input, hx(c, "crc32_input_hex"));
        assert_eq!(
            format!("{:08x}", crc32fast::hash(&crc_input)),
            s(c, "crc32")
        );

        // Parse back.
        let (parsed, got_payload) = header::parse_packet(&wire).unwrap();
        assert_eq!(parsed, repr);
        assert_eq!(got_payload, &payload[..]);
        assert_eq!(p.version(), 1);
        assert_eq!(p.payload(), &payload[..]);

        // PILT framing is magic + packet.
        let mut pilt = b"PILT".to_vec();
        pilt.extend_from_slice(&wire);
        assert_eq!(pilt, hx(c, "pilt_frame_hex"));
    }
}

#[test]
fn header_decode() {
    let d = load("header.json");
    let cases = arr(&d, "decode");
    assert_eq!(cases.len(), 6);
    for c in cases {
        let wire = hx(c, "wire_hex");
        let r = header::parse_packet(&wire);
        if c["accepted"].as_bool().unwrap() {
            let (repr, payload) = r.unwrap_or_else(|e| panic!("{}: {e}", s(c, "name")));
            assert_eq!(payload.len(), repr.payload_len);
            assert_eq!(&wire[34..34 + repr.payload_len], payload);
        } else {
            let e = r.expect_err(s(c, "name"));
            assert_eq!(e.to_string(), s(c, "reference_error"), "{}", s(c, "name"));
        }
    }
}

// ---------------------------------------------------------------- frames

use pilot::wire::frame::{self, AuthKeyRepr, Frame, SealedPacket};

fn arr32(v: &[u8]) -> [u8; 32] {
    v.try_into().expect("32 bytes")
}

#[test]
fn pila_frames() {
    let d = load("tunnel_crypto.json");
    for (who, node) in [("pila_a", "node_a"), ("pila_b", "node_b")] {
        let c = &d[who];
        let n = &d[node];
        let wire = hx(c, "frame_hex");
        assert_eq!(wire.len(), frame::PILA_LEN);
        let Ok(Frame::AuthKey(a)) = Frame::parse(&wire) else {
            panic!("{who}")
        };
        assert_eq!(u64::from(a.sender), u(n, "node_id"));
        assert_eq!(a.x25519.to_vec(), hx(n, "x25519_public_hex"));
        assert_eq!(a.ed25519.to_vec(), hx(n, "ed25519_public_hex"));
        if c.get("signature_hex").is_some() {
            assert_eq!(a.signature.to_vec(), hx(c, "signature_hex"));
            assert_eq!(a.signed_message().to_vec(), hx(c, "signed_message_hex"));
            assert_eq!(
                frame::auth_signed_message(a.sender, &a.x25519).to_vec(),
                hx(c, "signed_message_hex")
            );
        }
        // The signature verifies with the frame's Ed25519 key.
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&a.ed25519).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&a.signature);
        vk.verify_strict(&a.signed_message(), &sig).unwrap();
        // Re-emit byte-exact, both ways.
        assert_eq!(Frame::AuthKey(a).to_vec(), wire);
        let mut buf = [0u8; 200];
        assert_eq!(a.emit(&mut buf), Ok(136));
        assert_eq!(&buf[..136], &wire[..]);
        assert_eq!(AuthKeyRepr::parse(&wire), Ok(a));
        // Extra bytes after a PILA are ignored (§3.1 step 5).
        let mut longer = wire.clone();
        longer.extend_from_slice(b"junk");
        assert_eq!(Frame::parse(&longer), Ok(Frame::AuthKey(a)));
        // Truncated by one byte is refused.
        assert!(Frame::parse(&wire[..135]).is_err());
    }
}

#[test]
fn pilk_frame() {
    let d = load("tunnel_crypto.json");
    let c = &d["pilk_a"];
    let wire = hx(c, "frame_hex");
    assert_eq!(wire.len() as u64, u(c, "frame_len"));
    let f = Frame::parse(&wire).unwrap();
    assert_eq!(
        f,
        Frame::Key {
            sender: u(&d["node_a"], "node_id") as u32,
            x25519: arr32(&hx(&d["node_a"], "x25519_public_hex")),
        }
    );
    assert_eq!(f.to_vec(), wire);
    assert!(Frame::parse(&wire[..39]).is_err());
}

#[test]
fn pils_frames() {
    let d = load("tunnel_crypto.json");
    let cases = arr(&d, "pils");
    assert_eq!(cases.len(), 3);
    for c in cases {
        let wire = hx(c, "frame_hex");
        let Ok(
            f @ Frame::Sealed {
                sender,
                nonce,
                ciphertext,
            },
        ) = Frame::parse(&wire)
        else {
            panic!("{}", s(c, "name"))
        };
        assert_eq!(u64::from(sender), u(c, "sender_node_id"));
        assert_eq!(nonce.to_vec(), hx(c, "nonce_hex"));
        assert_eq!(ciphertext.to_vec(), hx(c, "ciphertext_and_tag_hex"));
        assert_eq!(
            ciphertext.len(),
            hx(c, "plaintext_hex").len() + frame::TAG_LEN
        );
        assert_eq!(f.to_vec(), wire);
        assert_eq!(wire.len(), frame::sealed_len(hx(c, "plaintext_hex").len()));

        let v = SealedPacket::new_checked(&wire[..]).unwrap();
        assert!(v.has_magic());
        assert_eq!(u64::from(v.sender()), u(c, "sender_node_id"));
        assert_eq!(v.aad().to_vec(), hx(c, "aad_hex"));
        assert_eq!(v.nonce_prefix().to_vec(), hx(c, "nonce_prefix_hex"));
        assert_eq!(v.counter(), u(c, "counter"));
        assert_eq!(v.ciphertext().to_vec(), hx(c, "ciphertext_and_tag_hex"));

        // The plaintext is a valid virtual packet.
        header::parse_packet(&hx(c, "plaintext_hex")).unwrap();
    }
}

// ---------------------------------------------------------------- trust

use pilot::wire::trust::{self, HandshakeMessage, HandshakeType, TrustFile};

#[test]
fn trust_handshake_messages() {
    let d = load("trust_handshake.json");
    let receiver = u(&d, "receiver_node_id") as u32;
    let sender = &d["sender"];
    let seed: [u8; 32] = hx(sender, "ed25519_seed_hex").try_into().unwrap();
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    let cases = arr(&d, "messages");
    assert_eq!(cases.len(), 4);
    for c in cases {
        let json = s(c, "json");
        assert_eq!(json.as_bytes(), &hx(c, "json_hex")[..]);
        let m = HandshakeMessage::from_slice(json.as_bytes()).unwrap();
        assert_eq!(m.kind.as_str(), s(c, "type"));
        assert_eq!(m.timestamp, d["timestamp"].as_i64().unwrap());
        assert_eq!(u64::from(m.node_id), u(sender, "node_id"));
        assert_eq!(m.public_key, s(sender, "public_key_b64"));
        assert_eq!(m.signature, s(c, "signature_b64"));
        // Canonical re-serialisation is byte-identical, and so is its hash.
        assert_eq!(m.canonical_json(), json);
        assert_eq!(hex::encode(m.replay_hash()), s(c, "replay_hash_sha256_hex"));
        // Signed string and signature.
        assert_eq!(
            trust::signed_string(m.node_id, receiver),
            s(c, "signed_string")
        );
        assert_eq!(m.signed_string_to(receiver), s(c, "signed_string"));
        let sig = m.signature_bytes().unwrap().unwrap();
        let pk = m.public_key_bytes().unwrap().unwrap();
        assert_eq!(pk, sk.verifying_key().to_bytes());
        use ed25519_dalek::Signer;
        assert_eq!(
            sk.sign(s(c, "signed_string").as_bytes()).to_bytes(),
            sig,
            "deterministic Ed25519 over the signed string"
        );
        // Rebuilding the message from its parts gives the same bytes.
        let rebuilt = HandshakeMessage {
            justification: m.justification.clone(),
            reason: m.reason.clone(),
            ..HandshakeMessage::new(m.kind, m.node_id, &pk, &sig, m.timestamp)
        };
        assert_eq!(rebuilt.canonical_json(), json);
        assert_eq!(
            serde_json::to_value(&m).unwrap()["type"],
            serde_json::Value::from(s(c, "type"))
        );
    }
    let kinds: Vec<_> = cases
        .iter()
        .map(|c| {
            HandshakeMessage::from_slice(s(c, "json").as_bytes())
                .unwrap()
                .kind
        })
        .collect();
    assert_eq!(
        kinds,
        [
            HandshakeType::Request,
            HandshakeType::Accept,
            HandshakeType::Reject,
            HandshakeType::Revoke
        ]
    );
}

#[test]
fn trust_registry_respond_signature() {
    let d = load("trust_handshake.json");
    let r = &d["registry_relay_respond_signature"];
    let from = u(&d["sender"], "node_id") as u32;
    let to = u(&d, "receiver_node_id") as u32;
    assert_eq!(
        trust::respond_signed_string(from, to),
        s(r, "signed_string")
    );
    let seed: [u8; 32] = hx(&d["sender"], "ed25519_seed_hex").try_into().unwrap();
    use base64::Engine as _;
    use ed25519_dalek::Signer;
    let sig = ed25519_dalek::SigningKey::from_bytes(&seed).sign(s(r, "signed_string").as_bytes());
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        s(r, "signature_b64")
    );
}

#[test]
fn trust_file_round_trip() {
    let d = load("trust_handshake.json");
    let content = s(&d["trust_file"], "content");
    let f = TrustFile::from_slice(content.as_bytes()).unwrap();
    assert_eq!(f.trusted.len(), 1);
    assert_eq!(f.trusted[0].node_id, 1000);
    assert!(f.trusted[0].mutual);
    assert_eq!(f.trusted[0].network, 0);
    assert_eq!(f.pending.len(), 1);
    assert_eq!(f.pending[0].node_id, 77);
    assert_eq!(f.pending[0].justification, "hi");
    assert_eq!(f.pending[0].public_key, "");
    assert_eq!(f.to_pretty_json(), content);
}

// ---------------------------------------------------------------- data exchange

use pilot::wire::dataexchange::{self as dx, DataFrame, Event, FrameType};

#[test]
fn dataexchange_frames() {
    let d = load("dataexchange.json");
    let cases = arr(&d, "frames");
    assert_eq!(cases.len(), 6);
    for c in cases {
        let name = s(c, "name");
        let wire = hx(c, "wire_hex");
        let t = FrameType::from(u(c, "type") as u32);
        assert_eq!(t.to_string(), s(c, "type_name"), "{name}");
        let (f, used) = dx::decode(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(f.frame_type, t);
        assert_eq!(dx::read_frame(&wire), Ok((f, used)));
        // Re-emit byte-exact.
        assert_eq!(f.to_vec().unwrap(), wire, "{name}");
        // Content and file name as the reference decodes them.
        let content = hx(c, "content_hex");
        let filename = s(c, "filename");
        if t == FrameType::File {
            let fb = f.file().unwrap().unwrap();
            assert_eq!(fb.name, s(c, "decoded_filename").as_bytes());
            assert_eq!(fb.content, &hx(c, "decoded_content_hex")[..]);
            // The sender side builds the same body.
            let body = dx::file_body(filename, &content).unwrap();
            assert_eq!(DataFrame::new(t, &body).to_vec().unwrap(), wire);
        } else {
            assert_eq!(f.body, &hx(c, "decoded_content_hex")[..]);
            assert_eq!(DataFrame::new(t, &content).to_vec().unwrap(), wire);
        }
        // Every strict prefix is "need more bytes".
        for n in 0..wire.len() {
            assert_eq!(dx::decode(&wire[..n]), Ok(None), "{name} prefix {n}");
        }
    }
}

#[test]
fn dataexchange_ack_replies() {
    let d = load("dataexchange.json");
    let frames = arr(&d, "frames");
    let by_name = |n: &str| {
        frames
            .iter()
            .find(|c| s(c, "name") == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    for (data, reply) in [
        ("text", "ack_reply_for_text"),
        ("file", "ack_reply_for_file"),
    ] {
        let wire = hx(by_name(data), "wire_hex");
        let (f, _) = dx::decode(&wire).unwrap().unwrap();
        let text = dx::ack_text(f.frame_type, f.content_len().unwrap());
        let expect = hx(by_name(reply), "wire_hex");
        assert_eq!(dx::reply_frame(&text), expect);
        assert_eq!(text.as_bytes(), &hx(by_name(reply), "content_hex")[..]);
    }
}

#[test]
fn dataexchange_read_cases() {
    let d = load("dataexchange.json");
    let cases = arr(&d, "read_cases");
    assert_eq!(cases.len(), 9);
    for c in cases {
        let name = s(c, "name");
        let wire = hx(c, "wire_hex");
        // The reference reads a frame and, for FILE, splits the body; an
        // error anywhere closes the connection.
        let result = dx::read_frame(&wire).and_then(|(f, _)| match f.file() {
            Some(r) => r.map(|fb| (f.frame_type, fb.name, fb.content)),
            None => Ok((f.frame_type, &[][..], f.body)),
        });
        if c["accepted"].as_bool().unwrap() {
            let (t, fname, content) = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.to_string(), s(c, "type_name"), "{name}");
            assert_eq!(fname, s(c, "filename").as_bytes(), "{name}");
            assert_eq!(content, &hx(c, "content_hex")[..], "{name}");
        } else {
            let e = result.expect_err(name);
            assert_eq!(e.to_string(), s(c, "reference_error"), "{name}");
        }
    }
}

#[test]
fn event_stream_frames() {
    let d = load("dataexchange.json");
    let cases = arr(&d, "event_stream");
    assert_eq!(cases.len(), 3);
    for c in cases {
        let wire = hx(c, "wire_hex");
        let payload = hx(c, "payload_hex");
        let e = Event::new(s(c, "topic").as_bytes(), &payload);
        assert_eq!(e.to_vec().unwrap(), wire);
        assert_eq!(dx::decode_event(&wire), Ok(Some((e, wire.len()))));
        assert_eq!(e.is_wildcard(), s(c, "topic") == "*");
        for n in 0..wire.len() {
            assert_eq!(dx::decode_event(&wire[..n]), Ok(None));
        }
    }
}
