//! Signed registry answers (issue 10 item 11): a node started with
//! `--registry HOST:PORT#ed25519:<key>` accepts only answers signed by
//! that rendezvous key, so a forged or impostor registry is refused with
//! a clear error; the key survives rendezvous restarts.

mod common;

use std::time::Duration;

use common::{wait_until, Node, Rendezvous};

/// The `registry pin:` line the rendezvous printed at start.
fn pin_of(rdv: &Rendezvous) -> String {
    let mut pin = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            pin = rdv
                .log()
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("registry pin: "))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or_default()
                .to_string();
            !pin.is_empty()
        }),
        "no pin line in the rendezvous log:\n{}",
        rdv.log()
    );
    pin
}

fn start_pinned(node: &Node, rdv: &Rendezvous, pin: &str) -> common::Out {
    let registry = format!("{}#{pin}", rdv.registry);
    node.ctl(&[
        "--json",
        "daemon",
        "start",
        "--registry",
        &registry,
        "--beacon",
        &rdv.beacon,
        "--public",
        "--heartbeat",
        "1s",
    ])
}

#[test]
fn a_pinned_node_works_with_its_rendezvous_and_refuses_another_key() {
    let mut rdv = Rendezvous::start();
    let pin = pin_of(&rdv);
    assert!(pin.starts_with("ed25519:"), "{pin}");

    // The right pin: everything works, lookups included.
    let a = Node::new("pin-a");
    let out = start_pinned(&a, &rdv, &pin);
    assert_eq!(out.code, 0, "{out:?}\n{}", a.log());
    let addr = a.address();
    let looked = a.json(&["lookup", &addr]);
    assert_eq!(looked["address"], addr.as_str(), "{looked}");

    // The key is kept beside the store: same pin after a restart.
    rdv.restart();
    assert_eq!(pin_of(&rdv), pin, "the rendezvous key changed on restart");

    // A different key (an impostor, or a typo): refused, with the fix.
    let b = Node::new("pin-b");
    let other = format!(
        "ed25519:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])
    );
    let out = start_pinned(&b, &rdv, &other);
    assert_ne!(out.code, 0, "a wrong pin was accepted: {out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("not signed by the pinned key") && text.contains("registry pin:"),
        "unexpected error: {text}\n{}",
        b.log()
    );

    // A malformed pin is a one-line usage error.
    let c = Node::new("pin-c");
    let out = start_pinned(&c, &rdv, "ed25519:nonsense");
    assert_ne!(out.code, 0);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("invalid registry pin"),
        "{out:?}"
    );
    a.stop();
}
