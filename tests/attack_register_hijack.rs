//! Attack (issue 10 item 1): `register` is unsigned in Pilot v1, so an
//! attacker who read a node's public key with `lookup` sends a registration
//! with that key: on the old registry it overwrote the node's endpoint and its
//! `hostname` field renamed the node, freeing the name for the attacker's own
//! node. Now a registration of a known key changes nothing until the key is
//! proven on that connection.

mod common;

use common::{Node, Rendezvous};
use pilot::crypto::identity::Identity;
use pilot::rendezvous::client::RegistryClient;
use pilot::wire::registry::{Register, Request, Response};

#[test]
fn attack_register_hijack_of_hostname_and_endpoint() {
    let rdv = Rendezvous::start();
    let alpha = Node::new("alpha");
    let info = alpha.start(&rdv, &["--public", "--hostname", "alpha"]);
    let victim = info["node_id"].as_u64().unwrap() as u32;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = RegistryClient::connect(&rdv.registry).await.unwrap();
        let before = c.lookup(victim).await.unwrap();
        assert_eq!(before.hostname.as_deref(), Some("alpha"));
        let real_before = before.real_addr.clone().unwrap();

        // The attack: the victim's key, the attacker's port, a new name.
        let mut r = Register::new(
            &pilot::crypto::identity::decode_public_key_b64(&before.public_key).unwrap(),
            "127.0.0.1:1",
        );
        r.hostname = Some("renamed".into());
        let reply = c.request(&Request::Register(r)).await.unwrap();
        let Response::RegisterOk(ok) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(ok.node_id, victim);

        // The attacker's own node now claims the freed name.
        let evil = Identity::from_seed([66u8; 32]);
        let mut r = Register::new(&evil.public_key(), "127.0.0.1:2");
        r.hostname = Some("alpha".into());
        let Response::RegisterOk(evil_ok) = c.request(&Request::Register(r)).await.unwrap() else {
            panic!()
        };
        assert_ne!(evil_ok.hostname.as_deref(), Some("alpha"), "name stolen");

        let after = c.lookup(victim).await.unwrap();
        assert_eq!(
            after.hostname.as_deref(),
            Some("alpha"),
            "an unsigned register renamed the node"
        );
        assert_eq!(
            after.real_addr.as_deref(),
            Some(real_before.as_str()),
            "an unsigned register moved the node's endpoint"
        );
        let resolved = c.resolve_hostname(None, "alpha").await.unwrap();
        assert_eq!(resolved.node_id, victim, "alpha resolves to the attacker");

        // Signing for the victim's id with another key proves nothing.
        let forged = pilot::rendezvous::client::sign(
            Request::Heartbeat(pilot::wire::registry::NodeSigned {
                node_id: victim,
                signature: None,
            }),
            evil.signing_key(),
        );
        let mut r = Register::new(
            &pilot::crypto::identity::decode_public_key_b64(&before.public_key).unwrap(),
            "127.0.0.1:3",
        );
        r.hostname = Some("renamed".into());
        let reply = c.request(&Request::Register(r)).await;
        assert!(matches!(reply, Ok(Response::RegisterOk(_))));
        assert!(
            c.request(&forged).await.is_err(),
            "forged heartbeat accepted"
        );
        let after = c.lookup(victim).await.unwrap();
        assert_eq!(after.hostname.as_deref(), Some("alpha"));
        assert_eq!(after.real_addr.as_deref(), Some(real_before.as_str()));
    });
    // The victim keeps working: its heartbeats (1 s) still succeed.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(alpha.json(&["info"])["hostname"], "alpha");
}
