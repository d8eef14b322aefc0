//! Secrets at rest: agents' secret model options (`api_key`) and webhooks' tokens and
//! credentials are sealed (AES-256-GCM, a random nonce per value) before a record reaches
//! the store, and opened when the store is read back. A copy of `head.redb`, its log or a
//! PostgreSQL dump holds `sealed:v1:...` where the secrets were.
//!
//! The key is the operator's: `--secrets-key-file` (64 hex digits); a file store without
//! one makes `secrets.key` (0600) beside `head.redb` on its first start. A value stored
//! before sealing was on is read as it is, and sealed when next written.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fleet_proto::{AgentSpec, SECRET_MODEL_OPTIONS, pb};

const PREFIX: &str = "sealed:v1:";
/// The key file a file store makes when the operator gives none.
pub const KEY_FILE: &str = "secrets.key";

/// Seals and opens secrets with one key.
#[derive(Clone)]
pub struct Sealer(Arc<LessSafeKey>);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// The key written as 64 hex digits (`openssl rand -hex 32`).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || "a secrets key is 64 hex digits (make one: openssl rand -hex 32)".to_owned();
        if text.len() != 64 {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            key[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        let key = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| bad())?;
        Ok(Self(Arc::new(LessSafeKey::new(key))))
    }

    /// The key in `path`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the secrets key {}: {e}", path.display()))?;
        Self::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The key in `dir/secrets.key`, made (0600) if there is none yet.
    pub fn in_dir(dir: &Path) -> Result<Self, String> {
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            let mut key = [0u8; 32];
            SystemRandom::new().fill(&mut key).map_err(|_| "no random key".to_owned())?;
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            super::redb::private_dir(dir)
                .and_then(|()| write_private(&path, &hex))
                .map_err(|e| format!("cannot write the secrets key {}: {e}", path.display()))?;
        }
        Self::read(&path)
    }

    /// `plain`, sealed; an empty value stays empty (nothing to hide).
    pub fn seal(&self, plain: &str) -> String {
        if plain.is_empty() || plain.starts_with(PREFIX) {
            return plain.to_owned();
        }
        let mut nonce = [0u8; NONCE_LEN];
        if SystemRandom::new().fill(&mut nonce).is_err() {
            // Never store a secret in clear: without randomness, store nothing of it.
            return String::new();
        }
        let mut data = plain.as_bytes().to_vec();
        let nonce_value = Nonce::assume_unique_for_key(nonce);
        if self.0.seal_in_place_append_tag(nonce_value, Aad::empty(), &mut data).is_err() {
            return String::new();
        }
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        format!("{PREFIX}{}", STANDARD.encode(sealed))
    }

    /// A sealed value opened (a value stored before sealing, as it is); an error names
    /// what to check (another head's key, a damaged store).
    pub fn open(&self, text: &str) -> Result<String, String> {
        let Some(encoded) = text.strip_prefix(PREFIX) else { return Ok(text.to_owned()) };
        let wrong = || {
            "a sealed secret does not open with this head's key: start it with the \
             --secrets-key-file that sealed it"
                .to_owned()
        };
        let mut sealed = STANDARD.decode(encoded).map_err(|_| wrong())?;
        if sealed.len() < NONCE_LEN {
            return Err(wrong());
        }
        let data = sealed.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&sealed).map_err(|_| wrong())?;
        let mut data = data;
        let plain = self.0.open_in_place(nonce, Aad::empty(), &mut data).map_err(|_| wrong())?;
        String::from_utf8(plain.to_vec()).map_err(|_| wrong())
    }

    /// An agent's spec with its secret options sealed.
    pub fn seal_spec(&self, spec: &AgentSpec) -> AgentSpec {
        let mut sealed = spec.clone();
        for key in SECRET_MODEL_OPTIONS {
            if let Some(value) = sealed.model_options.get_mut(key) {
                *value = self.seal(value);
            }
        }
        sealed
    }

    /// An agent's spec as stored, its secret options opened.
    pub fn open_spec(&self, mut spec: AgentSpec) -> Result<AgentSpec, String> {
        for key in SECRET_MODEL_OPTIONS {
            if let Some(value) = spec.model_options.get_mut(key) {
                *value = self.open(value)?;
            }
        }
        Ok(spec)
    }

    /// A task's push configs with their tokens and credentials sealed (or opened).
    pub fn seal_push(&self, configs: &mut pb::StoredPushConfigs) {
        for c in &mut configs.configs {
            c.token = self.seal(&c.token);
            c.credentials = self.seal(&c.credentials);
        }
    }

    pub fn open_push(&self, configs: &mut pb::StoredPushConfigs) -> Result<(), String> {
        for c in &mut configs.configs {
            c.token = self.open(&c.token)?;
            c.credentials = self.open(&c.credentials)?;
        }
        Ok(())
    }
}

/// Writes `text` to a new file only this user may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_with_their_key_only() {
        let dir = std::env::temp_dir().join(format!("fleet-sealed-{}", uuid::Uuid::new_v4()));
        let sealer = Sealer::in_dir(&dir).expect("a key made");
        let again = Sealer::in_dir(&dir).expect("the same key read");
        let sealed = sealer.seal("sk-secret");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("sk-secret"), "{sealed}");
        assert_ne!(sealed, sealer.seal("sk-secret"), "a nonce per value");
        assert_eq!(again.open(&sealed).as_deref(), Ok("sk-secret"));
        assert_eq!(sealer.open("stored before").as_deref(), Ok("stored before"));
        let other = Sealer::from_hex(&"ab".repeat(32)).expect("a key");
        assert!(other.open(&sealed).is_err_and(|e| e.contains("--secrets-key-file")));
        assert!(Sealer::from_hex("short").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE)).expect("key file").permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
