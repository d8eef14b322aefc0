//! Who a caller is (a [`Principal`]: a name, a tenant and a [`Role`]) and what that lets it
//! do. Every front door resolves the principal once ([`Principals`]), and the cluster's
//! operations take it: tenants are checked where the resources are, not at each door.

use std::collections::HashMap;
use std::sync::Arc;

use fleet_proto::AgentSpec;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Error, Result};

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, in every tenant: replaces shared agents, sees all tasks.
    Admin,
    /// Registers and replaces its tenant's agents; submits, reads, cancels and answers its
    /// tenant's tasks; hosts tools and publishes in its tenant.
    User,
    /// Reads its tenant's agents, tasks and topics; changes nothing.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
            Self::Reader => "reader",
        }
    }
}

/// The tenant of the head's own credentials (`--token`, `--api-key`) and of a head without
/// credentials.
pub const DEFAULT_TENANT: &str = "default";

/// A caller the head knows: every operation on the cluster is done as one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    name: Arc<str>,
    tenant: Arc<str>,
    role: Role,
}

impl Principal {
    pub fn new(name: &str, tenant: &str, role: Role) -> Self {
        Self { name: name.into(), tenant: tenant.into(), role }
    }

    /// The head's operator: an admin of the default tenant. Callers inside the head's
    /// process (an embedded cluster, the store's replay) act as it, and so does everyone
    /// when the head has no credentials (it then listens on loopback only).
    pub fn operator() -> Self {
        Self::new("admin", DEFAULT_TENANT, Role::Admin)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether resources of `tenant` exist for this principal. Others' answer "not found":
    /// a principal cannot tell another tenant's ids from ids that do not exist.
    pub fn sees(&self, tenant: &str) -> bool {
        self.is_admin() || *self.tenant == *tenant
    }

    /// Whether this principal sees (and may run) the agent: its tenant's, or shared ones.
    pub fn sees_agent(&self, spec: &AgentSpec) -> bool {
        spec.tenant.is_empty() || self.sees(&spec.tenant)
    }

    /// Whether the principal may follow or publish on `topic`, or give it to an agent: a
    /// tenant's topics are named `TENANT.NAME`; others (without that prefix) are the
    /// default tenant's, and admins use any.
    pub fn may_use_topic(&self, topic: &str) -> bool {
        if self.is_admin() {
            return true;
        }
        match topic.split_once('.') {
            Some((tenant, _)) => *tenant == *self.tenant,
            None => *self.tenant == *DEFAULT_TENANT,
        }
    }

    /// Refuses readers: submitting, canceling, answering, publishing, hosting tools.
    pub fn may_act(&self) -> Result<()> {
        if self.role == Role::Reader {
            return Err(Error::PermissionDenied(format!(
                "{:?} is a reader: it may read its tenant's agents and tasks but not change \
                 them (ask an admin for a user key)",
                &*self.name
            )));
        }
        Ok(())
    }

    /// Checks a registration of `spec` that would replace `existing` (none: a new name)
    /// and sets the agent's tenant: a user's agents are its own tenant's; only admins make
    /// or replace shared agents (the config file's among them).
    pub fn may_register(&self, spec: &mut AgentSpec, existing: Option<&AgentSpec>) -> Result<()> {
        self.may_act()?;
        if self.is_admin() {
            return Ok(());
        }
        if spec.tenant.is_empty() {
            spec.tenant = self.tenant.to_string();
        } else if *spec.tenant != *self.tenant {
            return Err(Error::PermissionDenied(format!(
                "an agent of tenant {:?} cannot be registered by {:?} of tenant {:?}",
                spec.tenant, &*self.name, &*self.tenant
            )));
        }
        match existing {
            Some(old) if old.tenant.is_empty() => Err(Error::PermissionDenied(format!(
                "agent {:?} is shared by every tenant (declared by the operator): only an \
                 admin may replace it; register yours under another name",
                old.name
            ))),
            // Another tenant's name: taken, like any name, without saying by whom.
            Some(old) if *old.tenant != *self.tenant => Err(Error::NameTaken(old.name.clone())),
            _ => Ok(()),
        }
    }
}

/// A `[[principal]]` of the config file: a key (its SHA-256, never the key itself), who
/// holds it and what it may do.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PrincipalTable")]
pub struct PrincipalKey {
    pub principal: Principal,
    pub key_sha256: [u8; 32],
}

/// How a `[[principal]]` table reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalTable {
    pub name: String,
    pub tenant: Option<String>,
    pub role: Role,
    pub key_sha256: String,
}

impl TryFrom<PrincipalTable> for PrincipalKey {
    type Error = String;

    fn try_from(t: PrincipalTable) -> std::result::Result<Self, String> {
        if !crate::agents::valid_name(&t.name) {
            return Err(format!(
                "principal name {:?}: use letters, digits, '-', '_' or '.' (at most 64)",
                t.name
            ));
        }
        let tenant = t.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned());
        if !valid_tenant(&tenant) {
            return Err(format!(
                "principal {:?}: tenant {tenant:?}: use 1 to 32 letters, digits, '-' or '_' \
                 (a tenant's topics are named TENANT.NAME)",
                t.name
            ));
        }
        let key_sha256 = parse_sha256(&t.key_sha256).ok_or_else(|| {
            format!(
                "principal {:?}: key_sha256 is 64 hex digits, the SHA-256 of the key \
                 (`printf %s KEY | sha256sum`)",
                t.name
            )
        })?;
        Ok(Self { principal: Principal::new(&t.name, &tenant, t.role), key_sha256 })
    }
}

/// A tenant's name: no '.', which separates it from the name in its topics'.
pub fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The SHA-256 of a key, as `key_sha256` takes it.
pub fn key_sha256(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The client credentials a head takes and whose each is: its own secrets (`--token`,
/// `--api-key`, admins of the default tenant) and the config file's principals. With none
/// configured every caller is the [`Principal::operator`].
#[derive(Clone, Debug, Default)]
pub struct Principals {
    secrets: Arc<[Box<str>]>,
    /// By the SHA-256 of their key.
    keys: Arc<HashMap<[u8; 32], Principal>>,
}

impl Principals {
    pub fn new(secrets: Vec<Box<str>>, keys: Vec<PrincipalKey>) -> Self {
        let keys = keys.into_iter().map(|k| (k.key_sha256, k.principal)).collect();
        Self { secrets: secrets.into(), keys: Arc::new(keys) }
    }

    /// Whether callers must present a credential.
    pub fn required(&self) -> bool {
        !self.secrets.is_empty() || !self.keys.is_empty()
    }

    /// Who presented `given`, if anyone. The head's own secrets are compared in constant
    /// time, each of them; a principal's key is looked up by its SHA-256, which tells a
    /// timing observer about hashes only, never about a key (and scales to many users).
    pub fn resolve(&self, given: Option<&[u8]>) -> Option<Principal> {
        if !self.required() {
            return Some(Principal::operator());
        }
        let given = given?;
        let secret = self
            .secrets
            .iter()
            .fold(false, |found, s| found | bool::from(s.as_bytes().ct_eq(given)));
        if secret {
            return Some(Principal::operator());
        }
        if self.keys.is_empty() {
            return None;
        }
        self.keys.get(&key_sha256(given)).cloned()
    }

    /// Who an HTTP request comes from: `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    pub fn resolve_http(&self, headers: &axum::http::HeaderMap) -> Option<Principal> {
        if !self.required() {
            return Some(Principal::operator());
        }
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let x_api_key = headers.get("x-api-key").map(|v| v.as_bytes());
        [bearer, x_api_key].into_iter().flatten().find_map(|given| self.resolve(Some(given)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(name: &str, tenant: &str, role: Role, key: &str) -> PrincipalKey {
        PrincipalKey {
            principal: Principal::new(name, tenant, role),
            key_sha256: key_sha256(key.as_bytes()),
        }
    }

    #[test]
    fn keys_resolve_to_their_principals_and_secrets_to_the_operator() {
        let principals = Principals::new(
            vec!["t0ken".into()],
            vec![keyed("alice", "a", Role::User, "ka"), keyed("rita", "a", Role::Reader, "kr")],
        );
        assert_eq!(principals.resolve(Some(b"t0ken")), Some(Principal::operator()));
        assert_eq!(
            principals.resolve(Some(b"ka")).map(|p| p.name().to_owned()),
            Some("alice".into())
        );
        assert_eq!(principals.resolve(Some(b"kr")).map(|p| p.role()), Some(Role::Reader));
        assert_eq!(principals.resolve(Some(b"k")), None);
        assert_eq!(principals.resolve(None), None);
        assert_eq!(Principals::default().resolve(None), Some(Principal::operator()));
    }

    #[test]
    fn a_key_table_reads_its_hash_and_refuses_a_bad_one() {
        let table = |hash: &str| PrincipalTable {
            name: "bob".into(),
            tenant: Some("b".into()),
            role: Role::User,
            key_sha256: hash.into(),
        };
        let hash: String = key_sha256(b"kb").iter().map(|b| format!("{b:02x}")).collect();
        let key = PrincipalKey::try_from(table(&hash)).expect("a valid table");
        assert_eq!(key.key_sha256, key_sha256(b"kb"));
        assert!(
            PrincipalKey::try_from(table("kb")).expect_err("not a hash").contains("64 hex digits")
        );
        assert!(PrincipalKey::try_from(table(&"g".repeat(64))).is_err());
    }

    #[test]
    fn users_register_in_their_tenant_and_never_replace_shared_or_others_agents() {
        let alice = Principal::new("alice", "a", Role::User);
        let mut spec = AgentSpec { name: "w".into(), ..Default::default() };
        alice.may_register(&mut spec, None).expect("a new name");
        assert_eq!(spec.tenant, "a");
        let shared = AgentSpec { name: "w".into(), ..Default::default() };
        assert!(matches!(
            alice.may_register(&mut spec.clone(), Some(&shared)),
            Err(Error::PermissionDenied(_))
        ));
        let bobs = AgentSpec { name: "w".into(), tenant: "b".into(), ..Default::default() };
        assert!(matches!(
            alice.may_register(&mut spec.clone(), Some(&bobs)),
            Err(Error::NameTaken(_))
        ));
        let mut elsewhere =
            AgentSpec { name: "x".into(), tenant: "b".into(), ..Default::default() };
        assert!(alice.may_register(&mut elsewhere, None).is_err());
        let reader = Principal::new("rita", "a", Role::Reader);
        assert!(reader.may_register(&mut spec.clone(), None).is_err());
        Principal::operator().may_register(&mut spec.clone(), Some(&shared)).expect("admins may");
        assert!(alice.sees_agent(&shared) && alice.sees_agent(&spec) && !alice.sees_agent(&bobs));
        assert!(alice.may_use_topic("a.news") && !alice.may_use_topic("b.news"));
        assert!(!alice.may_use_topic("news") && !alice.may_use_topic("ab.news"));
        assert!(Principal::operator().may_use_topic("b.news"));
    }
}
