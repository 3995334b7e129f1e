//! Signed registry answers (issue 10 item 11, spec §12.18): a node that
//! knows the rendezvous' public key (its *pin*) can tell a real answer from
//! one forged on the path, so the Ed25519 keys it gets from `lookup` are as
//! good as the pin.
//!
//! Shape, chosen to leave Pilot v1 untouched for reference nodes:
//! - the node adds a `nonce` field (random, base64) to its JSON request;
//!   the reference registry and reference nodes never see or send one;
//! - our rendezvous answers such a request with the usual JSON object plus
//!   `server_sig`: Ed25519 over `pilot-registry-answer-v1\n<nonce>\n<answer>`
//!   where `<answer>` is the compact JSON of the object without
//!   `server_sig` (serde_json's `Value` printing, keys in the order sent);
//! - the nonce binds the answer to this request, so an old signed answer
//!   cannot be replayed to a later one.
//!
//! Pins are written `ed25519:<base64 key>`; `pilot-rendezvous` prints its
//! own at start, and a node takes it as `--registry HOST:PORT#<pin>`.
//! Sans-IO: bytes and keys in, verdicts out.

use base64::Engine as _;
use serde_json::Value;

use crate::crypto::identity::{verify, Identity};

/// What every answer signature starts with (domain separation).
pub const CONTEXT: &str = "pilot-registry-answer-v1";
/// The request field that asks for a signed answer.
pub const NONCE_FIELD: &str = "nonce";
/// The answer field that carries the signature.
pub const SIG_FIELD: &str = "server_sig";
/// Longest nonce the server signs (ours are 24 characters).
pub const MAX_NONCE_LEN: usize = 64;
/// The text form's prefix.
pub const PIN_PREFIX: &str = "ed25519:";

/// Why an answer or a pin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// The pin is not `ed25519:<base64 of 32 bytes>`.
    #[error("invalid registry pin {0:?} (expected ed25519:<base64 public key>, as pilot-rendezvous prints at start)")]
    BadPin(String),
    /// The answer has no signature (an unpinned or reference registry).
    #[error("the registry's answer is not signed (is it a pilot-rendezvous with the pinned key?)")]
    Unsigned,
    /// The signature does not verify against the pin.
    #[error("the registry's answer is not signed by the pinned key: someone may be impersonating the registry")]
    BadSignature,
    /// Not a JSON object.
    #[error("the registry's answer is not a JSON object")]
    NotObject,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// `ed25519:<base64>` for a public key.
pub fn pin_text(public_key: &[u8; 32]) -> String {
    format!("{PIN_PREFIX}{}", b64().encode(public_key))
}

/// Parses `ed25519:<base64>` (or the bare base64).
pub fn parse_pin(s: &str) -> Result<[u8; 32], PinError> {
    let t = s.trim();
    let body = t.strip_prefix(PIN_PREFIX).unwrap_or(t);
    let bytes = b64()
        .decode(body)
        .map_err(|_| PinError::BadPin(s.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| PinError::BadPin(s.to_string()))
}

/// Splits `HOST:PORT#PIN` into the address and the pin, if there is one.
pub fn split_registry(s: &str) -> Result<(String, Option<[u8; 32]>), PinError> {
    match s.split_once('#') {
        Some((addr, pin)) => Ok((addr.to_string(), Some(parse_pin(pin)?))),
        None => Ok((s.to_string(), None)),
    }
}

/// The instances of a `--registry` value (`HOST:PORT[,HOST:PORT...]`,
/// instances over one shared database, in the order they are tried) and its
/// pin, if there is one.
pub fn registry_instances(s: &str) -> Result<(Vec<String>, Option<[u8; 32]>), PinError> {
    let (addrs, pin) = split_registry(s)?;
    Ok((
        addrs.split(',').map(|a| a.trim().to_string()).collect(),
        pin,
    ))
}

/// The rule for `--beacon` beside `instances` registry instances: one
/// beacon for all, or one per instance in the same order (it then fails
/// over with the registry). The error is the sentence shown to the user.
pub fn check_beacon_count(beacons: usize, instances: usize) -> Result<(), String> {
    if beacons == 1 || beacons == instances {
        return Ok(());
    }
    Err(format!(
        "{beacons} beacon addresses for {instances} registry instances: give one, or one per --registry instance in the same order"
    ))
}

fn message(nonce: &str, answer: &Value) -> String {
    format!("{CONTEXT}\n{nonce}\n{answer}")
}

/// The nonce of a request payload, if it asks for a signed answer (a
/// string of at most [`MAX_NONCE_LEN`] characters).
pub fn request_nonce(payload: &[u8]) -> Option<String> {
    // Cheap test first: most requests (all of a reference node's) have none.
    if !payload
        .windows(NONCE_FIELD.len() + 2)
        .any(|w| w == b"\"nonce\"")
    {
        return None;
    }
    let v: Value = serde_json::from_slice(payload).ok()?;
    let n = v.get(NONCE_FIELD)?.as_str()?;
    (!n.is_empty() && n.len() <= MAX_NONCE_LEN).then(|| n.to_string())
}

/// Adds `server_sig` to `answer` (a JSON object) for `nonce`.
pub fn sign_answer(key: &Identity, nonce: &str, answer: &mut Value) {
    let sig = key.sign(message(nonce, answer).as_bytes());
    if let Value::Object(m) = answer {
        m.insert(SIG_FIELD.into(), Value::String(b64().encode(sig)));
    }
}

/// Checks an answer payload against the pin for `nonce`.
pub fn verify_answer(pin: &[u8; 32], nonce: &str, payload: &[u8]) -> Result<(), PinError> {
    let mut v: Value = serde_json::from_slice(payload).map_err(|_| PinError::NotObject)?;
    let Value::Object(m) = &mut v else {
        return Err(PinError::NotObject);
    };
    let sig = match m.remove(SIG_FIELD) {
        Some(Value::String(s)) => s,
        _ => return Err(PinError::Unsigned),
    };
    let sig: [u8; 64] = b64()
        .decode(sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(PinError::BadSignature)?;
    if verify(pin, message(nonce, &v).as_bytes(), &sig) {
        Ok(())
    } else {
        Err(PinError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_instances_and_beacon_counts() {
        let (list, pin) = registry_instances("a:9000, b:9000").unwrap();
        assert_eq!(list, vec!["a:9000".to_string(), "b:9000".to_string()]);
        assert!(pin.is_none());
        assert!(registry_instances("a:9000,b:9000#ed25519:bad").is_err());
        assert!(check_beacon_count(1, 3).is_ok());
        assert!(check_beacon_count(3, 3).is_ok());
        let e = check_beacon_count(2, 3).unwrap_err();
        assert!(
            e.contains("2 beacon addresses for 3 registry instances"),
            "{e}"
        );
    }

    #[test]
    fn signed_answers_verify_only_for_their_nonce_and_key() {
        let key = Identity::from_seed([3u8; 32]);
        let pin = key.public_key();
        assert_eq!(parse_pin(&pin_text(&pin)).unwrap(), pin);
        let mut answer =
            serde_json::json!({"type": "lookup_ok", "node_id": 5, "public_key": "abc"});
        sign_answer(&key, "n1", &mut answer);
        let bytes = serde_json::to_vec(&answer).unwrap();
        assert_eq!(verify_answer(&pin, "n1", &bytes), Ok(()));
        assert_eq!(
            verify_answer(&pin, "n2", &bytes),
            Err(PinError::BadSignature)
        );
        let other = Identity::from_seed([4u8; 32]).public_key();
        assert_eq!(
            verify_answer(&other, "n1", &bytes),
            Err(PinError::BadSignature)
        );
        // A changed field breaks it.
        let forged = String::from_utf8(bytes).unwrap().replace("abc", "xyz");
        assert_eq!(
            verify_answer(&pin, "n1", forged.as_bytes()),
            Err(PinError::BadSignature)
        );
        // No signature, not an object.
        assert_eq!(
            verify_answer(&pin, "n1", br#"{"type":"x"}"#),
            Err(PinError::Unsigned)
        );
        assert_eq!(verify_answer(&pin, "n1", b"[1]"), Err(PinError::NotObject));
    }

    #[test]
    fn nonces_and_registry_strings() {
        assert_eq!(request_nonce(br#"{"type":"lookup","node_id":1}"#), None);
        assert_eq!(
            request_nonce(br#"{"type":"lookup","nonce":"abc"}"#).as_deref(),
            Some("abc")
        );
        let long = format!(r#"{{"nonce":"{}"}}"#, "a".repeat(65));
        assert_eq!(request_nonce(long.as_bytes()), None);
        let key = Identity::from_seed([3u8; 32]).public_key();
        let (a, p) = split_registry(&format!("1.2.3.4:9000#{}", pin_text(&key))).unwrap();
        assert_eq!((a.as_str(), p), ("1.2.3.4:9000", Some(key)));
        assert_eq!(split_registry("h:1").unwrap(), ("h:1".into(), None));
        assert!(split_registry("h:1#ed25519:xx").is_err());
    }
}
