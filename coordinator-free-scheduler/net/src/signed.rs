//! The signed gossip envelope.
//!
//! Gossip tells a receiver only which neighbour delivered a message, not who wrote it, so every
//! broadcast is sealed: `SignedEnvelope { author, body, signature }` where `body` is the
//! wire-encoded [`GossipBody`] and `signature` is the author's ed25519 signature over a domain
//! tag and `body`. [`open`] checks, in order: the size cap, the envelope encoding, that a
//! signature is present, that it verifies for `author`, and only then decodes the body — so an
//! unsigned or forged message costs one signature check and is never parsed further.

use iroh::{EndpointId, SecretKey, Signature};
use ova_jobs::wire;
use serde::{Deserialize, Serialize};

use crate::advert::Advert;
use crate::stats::DropReason;

/// Domain separation tag for gossip signatures.
const DOMAIN: &[u8] = b"ova-net gossip body v1\0";

/// What travels on the gossip topic: a body and its author's signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedEnvelope {
    /// The author's node id (ed25519 public key).
    pub author: [u8; 32],
    /// The wire-encoded [`GossipBody`].
    pub body: Vec<u8>,
    /// 64-byte ed25519 signature over `DOMAIN` ‖ `body`; empty if unsigned.
    pub signature: Vec<u8>,
}

/// The messages ova-net broadcasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipBody {
    /// A capacity advert.
    Advert(Advert),
    /// The author is shutting down cleanly: forget it now rather than at TTL expiry.
    Leave {
        /// Same ordering as [`Advert::order_key`].
        sent_at_ms: u64,
        /// Same ordering as [`Advert::order_key`].
        seq: u64,
    },
    /// An application (scheduler) broadcast.
    App {
        /// Makes repeated identical payloads distinct messages (gossip de-duplicates).
        seq: u64,
        /// The payload, opaque to ova-net.
        payload: Vec<u8>,
    },
}

/// Why an envelope was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The counter to bump.
    pub reason: DropReason,
    /// Detail for the log.
    pub detail: String,
}

fn rejected(reason: DropReason, detail: impl Into<String>) -> Rejected {
    Rejected { reason, detail: detail.into() }
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

/// Encodes and signs `body` as `key`'s envelope, ready to broadcast.
pub fn seal(key: &SecretKey, body: &GossipBody) -> Vec<u8> {
    let body = wire::encode(body);
    let signature = key.sign(&signed_bytes(&body)).to_bytes().to_vec();
    wire::encode(&SignedEnvelope { author: *key.public().as_bytes(), body, signature })
}

/// Checks and opens an envelope of at most `max_len` bytes: the verified author and the body.
pub fn open(bytes: &[u8], max_len: usize) -> Result<(EndpointId, GossipBody), Rejected> {
    let env: SignedEnvelope = wire::decode(bytes, max_len).map_err(|e| {
        let reason = match e {
            wire::WireError::TooLarge { .. } => DropReason::Oversize,
            _ => DropReason::Undecodable,
        };
        rejected(reason, e.to_string())
    })?;
    if env.signature.is_empty() {
        return Err(rejected(DropReason::Unsigned, "no signature"));
    }
    let author = EndpointId::from_bytes(&env.author)
        .map_err(|e| rejected(DropReason::BadSignature, format!("author is not a key: {e}")))?;
    let sig: [u8; 64] = env
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| rejected(DropReason::BadSignature, "signature is not 64 bytes"))?;
    author.verify(&signed_bytes(&env.body), &Signature::from_bytes(&sig)).map_err(|_| {
        rejected(DropReason::BadSignature, format!("signature does not verify for {author}"))
    })?;
    let body = wire::decode(&env.body, env.body.len())
        .map_err(|e| rejected(DropReason::Undecodable, format!("signed body: {e}")))?;
    Ok((author, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> GossipBody {
        GossipBody::App { seq: 7, payload: b"hello".to_vec() }
    }

    #[test]
    fn seal_then_open() {
        let key = SecretKey::generate();
        let bytes = seal(&key, &body());
        let (author, b) = open(&bytes, 1024).unwrap();
        assert_eq!(author, key.public());
        assert_eq!(b, body());
    }

    #[test]
    fn each_kind_of_bad_envelope_has_its_reason() {
        let key = SecretKey::generate();
        let good = seal(&key, &body());
        assert_eq!(open(&good, 10).unwrap_err().reason, DropReason::Oversize);
        assert_eq!(open(b"\x01garbage", 1024).unwrap_err().reason, DropReason::Undecodable);
        assert_eq!(open(&[], 1024).unwrap_err().reason, DropReason::Undecodable);

        let mut env: SignedEnvelope = wire::decode(&good, 1024).unwrap();
        let unsigned = SignedEnvelope { signature: vec![], ..env.clone() };
        assert_eq!(open(&wire::encode(&unsigned), 1024).unwrap_err().reason, DropReason::Unsigned);

        // Forged: claims another author.
        let other = SecretKey::generate();
        let forged = SignedEnvelope { author: *other.public().as_bytes(), ..env.clone() };
        assert_eq!(
            open(&wire::encode(&forged), 1024).unwrap_err().reason,
            DropReason::BadSignature
        );

        // Tampered body.
        let tampered_body = wire::encode(&GossipBody::App { seq: 7, payload: b"HELLO".to_vec() });
        let tampered = SignedEnvelope { body: tampered_body, ..env.clone() };
        assert_eq!(
            open(&wire::encode(&tampered), 1024).unwrap_err().reason,
            DropReason::BadSignature
        );

        // Short signature.
        env.signature.truncate(10);
        assert_eq!(open(&wire::encode(&env), 1024).unwrap_err().reason, DropReason::BadSignature);

        // Correctly signed garbage body.
        let junk = b"\x01\xff\xff".to_vec();
        let signature = key.sign(&signed_bytes(&junk)).to_bytes().to_vec();
        let env = SignedEnvelope { author: *key.public().as_bytes(), body: junk, signature };
        assert_eq!(open(&wire::encode(&env), 1024).unwrap_err().reason, DropReason::Undecodable);
    }
}
