//! Signed agent cards (A2A 1.0): a JWS over the card's canonical form (RFC 8785, JCS) with
//! the operator's key (`--card-signing-key`, PKCS#8 PEM, EC P-256 → ES256 or Ed25519 →
//! EdDSA), in the card's `signatures`. The public key is served as a JWK set at
//! `/.well-known/jwks.json`, named by the signature's `kid` (the key's RFC 7638 thumbprint)
//! and `jku`.
//!
//! What is signed is what a 1.0 client rebuilds from the card before it checks: the 1.0
//! fields only, `signatures` left out, empty strings, lists and objects dropped (the a2a
//! SDK's canonical form of its AgentCard message).

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// Signatures kept for cards already signed: ECDSA signatures differ each time, and a
/// card's ETag must not.
const MAX_KEPT_SIGNATURES: usize = 4096;

enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// The operator's card-signing key.
pub struct CardSigner {
    key: Key,
    /// The public key as a JWK (with `kid`, `alg` and `use`).
    jwk: Value,
    kid: String,
    alg: &'static str,
    /// Signatures by protected header and payload.
    kept: Mutex<HashMap<(String, String), String>>,
}

impl std::fmt::Debug for CardSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardSigner").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

impl CardSigner {
    /// Reads a PKCS#8 PEM private key; the error says what to give instead.
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| {
            format!(
                "--card-signing-key {shown}: not a PKCS#8 PEM private key ({e}); make one with \
                 `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {shown}` \
                 (or -algorithm ed25519)"
            )
        })?;
        Self::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("--card-signing-key {shown}: {e}"))
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let (key, alg, members) =
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
                let point = pair.public_key().as_ref();
                let (x, y) =
                    (point.get(1..33).unwrap_or_default(), point.get(33..).unwrap_or_default());
                let members = json!({"crv": "P-256", "kty": "EC", "x": b64(x), "y": b64(y)});
                (Key::Es256(pair), "ES256", members)
            } else if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                let members =
                    json!({"crv": "Ed25519", "kty": "OKP", "x": b64(pair.public_key().as_ref())});
                (Key::EdDsa(pair), "EdDSA", members)
            } else {
                return Err("the key is neither EC P-256 nor Ed25519".into());
            };
        // RFC 7638: the SHA-256 of the required members in canonical form.
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical(&members).as_bytes());
        let kid = b64(digest.as_ref());
        let mut jwk = members;
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg);
        jwk["use"] = json!("sig");
        Ok(Self { key, jwk, kid, alg, kept: Mutex::new(HashMap::new()) })
    }

    /// The JWK set of `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// The card's signature (`{"protected", "signature"}`), its key's set at `jku`.
    pub fn sign(&self, card: &Value, jku: &str) -> Result<Value, String> {
        let header = json!({"alg": self.alg, "kid": self.kid, "jku": jku, "typ": "JOSE"});
        let protected = URL_SAFE_NO_PAD.encode(header.to_string());
        let payload = URL_SAFE_NO_PAD.encode(signed_form(card));
        let key = (protected, payload);
        if let Some(signature) = self.kept.lock().get(&key) {
            return Ok(json!({"protected": key.0, "signature": signature}));
        }
        let input = format!("{}.{}", key.0, key.1);
        let signature = match &self.key {
            Key::Es256(pair) => pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .map_err(|_| "signing failed".to_owned())?
                .as_ref()
                .to_vec(),
            Key::EdDsa(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        let signature = URL_SAFE_NO_PAD.encode(signature);
        let mut kept = self.kept.lock();
        if kept.len() >= MAX_KEPT_SIGNATURES {
            kept.clear();
        }
        kept.insert(key.clone(), signature.clone());
        Ok(json!({"protected": key.0, "signature": signature}))
    }
}

/// The bytes a card's signature covers: its 1.0 fields (not `signatures`), empty values
/// dropped, in canonical form.
pub fn signed_form(card: &Value) -> String {
    let mut card = card.clone();
    if let Some(fields) = card.as_object_mut() {
        fields.remove("signatures");
        for key in super::card::V03_ONLY {
            fields.remove(*key);
        }
    }
    canonical(&without_empty(card).unwrap_or(Value::Object(Default::default())))
}

/// The value without empty strings, lists and objects, at any depth (`None`: it was empty).
fn without_empty(value: Value) -> Option<Value> {
    match value {
        Value::String(s) if s.is_empty() => None,
        Value::Array(items) => {
            let kept: Vec<Value> = items.into_iter().filter_map(without_empty).collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        Value::Object(fields) => {
            let kept: serde_json::Map<String, Value> =
                fields.into_iter().filter_map(|(k, v)| without_empty(v).map(|v| (k, v))).collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        other => Some(other),
    }
}

/// RFC 8785's canonical form: members sorted by their names' UTF-16 code units, no
/// whitespace, strings escaped as ECMAScript does (serde_json escapes the same way).
/// Integers only: a card has no fractional numbers.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            let mut names: Vec<&String> = fields.keys().collect();
            names.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, name) in names.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(name.clone()).to_string());
                out.push(':');
                write(&fields[name], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_sorts_members_and_keeps_no_whitespace() {
        let v = json!({"b": [1, {"z": "é\n", "a": true}], "a": null, "\u{e9}": 0, "Z": ""});
        assert_eq!(
            canonical(&v),
            "{\"Z\":\"\",\"a\":null,\"b\":[1,{\"a\":true,\"z\":\"é\\n\"}],\"é\":0}"
        );
    }

    #[test]
    fn the_signed_form_is_the_1_0_card_without_empty_values() {
        let card = json!({
            "name": "echo", "url": "http://x", "protocolVersion": "0.3.0",
            "skills": [{"id": "echo", "examples": [], "tags": ["m"]}],
            "capabilities": {"streaming": true, "extendedAgentCard": false},
            "signatures": [{"protected": "p", "signature": "s"}],
            "securityRequirements": [{"schemes": {"apiKey": {"list": []}}}],
        });
        assert_eq!(
            signed_form(&card),
            r#"{"capabilities":{"extendedAgentCard":false,"streaming":true},"name":"echo","skills":[{"id":"echo","tags":["m"]}]}"#
        );
    }

    #[test]
    fn an_ed25519_key_signs_what_its_jwk_verifies() -> Result<(), String> {
        let rng = SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
        let signer = CardSigner::from_pkcs8(der.as_ref())?;
        let card = json!({"name": "echo", "description": "d"});
        let signature = signer.sign(&card, "http://h/.well-known/jwks.json")?;
        let protected = signature["protected"].as_str().unwrap_or_default();
        let input = format!("{protected}.{}", URL_SAFE_NO_PAD.encode(signed_form(&card)));
        let x = signer.jwks()["keys"][0]["x"].as_str().map(|x| URL_SAFE_NO_PAD.decode(x));
        let public = x.and_then(Result::ok).unwrap_or_default();
        let sig = URL_SAFE_NO_PAD
            .decode(signature["signature"].as_str().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, public)
            .verify(input.as_bytes(), &sig)
            .map_err(|_| "the signature does not verify".to_owned())?;
        // Signed again, the same card keeps its signature (and so its ETag).
        assert_eq!(signer.sign(&card, "http://h/.well-known/jwks.json")?, signature);
        Ok(())
    }

    #[test]
    fn an_ec_key_signs_with_es256() -> Result<(), String> {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| e.to_string())?;
        let signer = CardSigner::from_pkcs8(der.as_ref())?;
        let jwk = &signer.jwks()["keys"][0];
        assert_eq!((jwk["alg"].as_str(), jwk["crv"].as_str()), (Some("ES256"), Some("P-256")));
        let card = json!({"name": "echo"});
        let signature = signer.sign(&card, "j")?;
        let sig = URL_SAFE_NO_PAD
            .decode(signature["signature"].as_str().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        assert_eq!(sig.len(), 64, "JWS ES256 is r and s, 32 bytes each");
        Ok(())
    }
}
