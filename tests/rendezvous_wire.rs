//! Byte-exact checks of `wire::beacon` and `wire::registry` against the
//! captured reference vectors (`tests/vectors/{beacon,registry}.json`).

use std::net::SocketAddr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use pilot::wire::beacon::{self, Repr};
use pilot::wire::registry::{self, BinaryMessage, Decoded};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn seed_key(v: &Value) -> SigningKey {
    let seed: [u8; 32] = hx(v).try_into().unwrap();
    SigningKey::from_bytes(&seed)
}

fn round_trip_beacon(bytes: &[u8]) -> Repr<'_> {
    let repr = Repr::parse_bytes(bytes).unwrap();
    assert_eq!(repr.to_vec(), bytes, "re-emit of {}", hex::encode(bytes));
    let pkt = beacon::Packet::new_checked(bytes).unwrap();
    assert_eq!(Repr::parse(&pkt).unwrap(), repr);
    repr
}

#[test]
fn beacon_exchanges_parse_and_emit_byte_exact() {
    let v = load("beacon.json");
    let ex = v["exchanges"].as_array().unwrap();
    assert_eq!(ex.len(), 8);
    let mut seen = 0;
    for e in ex {
        let name = e["name"].as_str().unwrap();
        match name {
            "discover" | "discover_ipv6" => {
                let sent = hx(&e["sent_hex"]);
                let reply = hx(&e["reply_hex"]);
                let Repr::Discover { node_id } = round_trip_beacon(&sent) else {
                    panic!("{name}")
                };
                assert!(node_id == 42 || node_id == 1000);
                let from: SocketAddr = e["from"].as_str().unwrap().parse().unwrap();
                assert_eq!(
                    round_trip_beacon(&reply),
                    Repr::DiscoverReply { endpoint: from }
                );
                assert_eq!(beacon::encode_discover_reply(from), reply);
                assert_eq!(beacon::encode_discover(node_id).to_vec(), sent);
            }
            "punch_request" => {
                let sent = hx(&e["sent_hex"]);
                assert_eq!(
                    round_trip_beacon(&sent),
                    Repr::PunchRequest {
                        requester: 42,
                        target: 1000
                    }
                );
                assert_eq!(beacon::encode_punch_request(42, 1000).to_vec(), sent);
                let to_req = hx(&e["reply_to_requester_hex"]);
                let to_tgt = hx(&e["reply_to_target_hex"]);
                assert_eq!(
                    round_trip_beacon(&to_req),
                    Repr::PunchCommand {
                        endpoint: "127.0.0.1:40002".parse().unwrap()
                    }
                );
                assert_eq!(
                    beacon::encode_punch_command("127.0.0.1:40001".parse().unwrap()),
                    to_tgt
                );
            }
            "relay" | "relay_spoofed_sender" => {
                let sent = hx(&e["sent_hex"]);
                let Repr::Relay {
                    sender,
                    destination,
                    frame,
                } = round_trip_beacon(&sent)
                else {
                    panic!("{name}")
                };
                assert_eq!(beacon::encode_relay(sender, destination, frame), sent);
                let delivered = hx(&e["delivered_to_target_hex"]);
                assert_eq!(
                    round_trip_beacon(&delivered),
                    Repr::RelayDelivery { sender, frame }
                );
                assert_eq!(beacon::encode_relay_delivery(sender, frame), delivered);
            }
            "relay_unknown_destination" => {
                let sent = hx(&e["sent_hex"]);
                assert!(matches!(
                    round_trip_beacon(&sent),
                    Repr::Relay {
                        destination: 99,
                        ..
                    }
                ));
            }
            "gossip_sync" => {
                let f = hx(&e["frame_hex"]);
                assert_eq!(
                    round_trip_beacon(&f),
                    Repr::Gossip {
                        beacon_id: 5,
                        node_ids: vec![42]
                    }
                );
            }
            other => panic!("unexpected exchange {other}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 8);
}

#[test]
fn framing_vectors_reencode_byte_exact() {
    let v = load("registry.json");
    for f in v["framing"].as_array().unwrap() {
        let frame = hx(&f["frame_hex"]);
        let Decoded::Frame { payload, consumed } = registry::decode_frame(&frame).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(consumed, frame.len());
        let parsed: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(parsed, f["json"]);
        let req = registry::parse_request(payload).unwrap();
        assert_eq!(
            registry::encode_json_frame(&req).unwrap(),
            frame,
            "{}",
            f["name"]
        );
    }
}

#[test]
fn signature_vectors_match_helpers_and_verify() {
    use registry::signed;
    let v = load("registry.json");
    let key = seed_key(&v["signer"]["ed25519_seed_hex"]);
    assert_eq!(
        registry::b64_encode(key.verifying_key().as_bytes()),
        v["signer"]["public_key_b64"].as_str().unwrap()
    );
    let helpers: Vec<String> = vec![
        signed::heartbeat(42),
        signed::deregister(42),
        signed::resolve(42, 1000),
        signed::report_trust(42, 1000),
        signed::revoke_trust(42, 1000),
        signed::set_visibility(42),
        signed::set_hostname(42),
        signed::set_tags(42),
        signed::set_task_exec(42),
        signed::poll_handshakes(42),
        signed::request_handshake(42, 1000),
        signed::respond_handshake(42, 1000),
        signed::punch(42, 1000),
        signed::join_network(42, 7),
        signed::leave_network(42, 7),
        signed::invite_to_network(42, 7, 1000),
        signed::poll_invites(42),
        signed::respond_invite(42, 7),
        signed::set_key_expiry(42),
        signed::rotate_key(42),
    ];
    let sigs = v["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), helpers.len());
    let vk: VerifyingKey = key.verifying_key();
    for (s, h) in sigs.iter().zip(&helpers) {
        let text = s["signed_string"].as_str().unwrap();
        assert_eq!(text, h, "{}", s["operation"]);
        let sig = registry::decode_signature(s["signature_b64"].as_str().unwrap()).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        vk.verify_strict(text.as_bytes(), &sig).unwrap();
        // Ed25519 is deterministic: our signature is the reference's.
        assert_eq!(key.sign(text.as_bytes()), sig);
    }
}

#[test]
fn binary_mode_vectors_parse_and_emit() {
    let v = load("registry.json");
    let bm = &v["binary_mode"];
    assert_eq!(hx(&bm["preamble_hex"]), registry::BINARY_PREAMBLE);
    let key = seed_key(&v["signer"]["ed25519_seed_hex"]);
    for f in bm["frames"].as_array().unwrap() {
        let frame = hx(&f["frame_hex"]);
        let Decoded::Frame { payload, consumed } = registry::decode_frame(&frame).unwrap() else {
            panic!()
        };
        assert_eq!(consumed, frame.len());
        let ty = u8::from_str_radix(f["msg_type"].as_str().unwrap().trim_start_matches("0x"), 16)
            .unwrap();
        assert_eq!(payload[0], ty);
        assert_eq!(&payload[1..], hx(&f["payload_hex"]));
        let m = BinaryMessage::parse_frame_payload(payload).unwrap();
        assert_eq!(m.emit_frame().unwrap(), frame, "{}", f["name"]);
        match (f["name"].as_str().unwrap(), &m) {
            ("heartbeat_request", BinaryMessage::Heartbeat { node_id, signature }) => {
                assert_eq!(*node_id, 42);
                let sig = key.sign(registry::signed::heartbeat(42).as_bytes());
                assert_eq!(&sig.to_bytes(), signature);
            }
            ("resolve_request", BinaryMessage::Resolve { signature, .. }) => {
                let sig = key.sign(registry::signed::resolve(42, 1000).as_bytes());
                assert_eq!(&sig.to_bytes(), signature);
            }
            ("lookup_response", BinaryMessage::LookupReply(l)) => {
                assert_eq!(l.node_id, 1000);
                assert_eq!(l.hostname, "bravo");
                assert_eq!(l.tags, vec!["gpu".to_string(), "web".to_string()]);
                assert_eq!(l.networks, vec![0, 7]);
                assert!(l.public);
            }
            (
                "resolve_response_key_age_unknown",
                BinaryMessage::ResolveReply { key_age_days, .. },
            ) => {
                assert_eq!(*key_age_days, None)
            }
            ("error", BinaryMessage::Error(e)) => assert_eq!(e, "node 7: not found"),
            ("json_passthrough", BinaryMessage::Json(j)) => {
                assert!(registry::parse_request(j).is_ok())
            }
            _ => {}
        }
    }
    // The live heartbeat: preamble followed by one heartbeat frame.
    let live = hx(&bm["live_heartbeat"]["sent_hex"]);
    assert_eq!(live[..5], registry::BINARY_PREAMBLE);
    let Decoded::Frame { payload, .. } = registry::decode_frame(&live[5..]).unwrap() else {
        panic!()
    };
    assert!(matches!(
        BinaryMessage::parse_frame_payload(payload).unwrap(),
        BinaryMessage::Heartbeat { node_id: 2, .. }
    ));
}

#[test]
fn transcript_frames_decode_to_their_json_and_reencode() {
    let v = load("registry.json");
    for s in v["transcript"]["steps"].as_array().unwrap() {
        for (fk, jk) in [
            ("request_frame_hex", "request"),
            ("response_frame_hex", "response"),
        ] {
            let frame = hx(&s[fk]);
            let Decoded::Frame { payload, .. } = registry::decode_frame(&frame).unwrap() else {
                panic!()
            };
            let json: Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(json, s[jk]);
            if jk == "response" {
                let r = registry::parse_response(payload).unwrap();
                assert_eq!(
                    registry::encode_json_frame(&r).unwrap(),
                    frame,
                    "{}",
                    s["step"]
                );
            } else if let Ok(r) = registry::parse_request(payload) {
                assert_eq!(
                    registry::encode_json_frame(&r).unwrap(),
                    frame,
                    "{}",
                    s["step"]
                );
            } else {
                // Only the deliberately invalid requests fail to parse.
                let step = s["step"].as_str().unwrap();
                assert!(step == "register without public_key" || step == "unknown type");
            }
        }
    }
}
