//! The FleetLock protocol (as zincati speaks it, served by airlock and
//! others): before rebooting, a host asks the lock server for one of its
//! group's reboot slots (`POST /v1/pre-reboot`); after a good boot it gives
//! the slot back (`POST /v1/steady-state`). Both carry the header
//! `fleet-lock-protocol: true` and the body
//! `{"client_params": {"id": ID, "group": GROUP}}`; 200 means yes, anything
//! else no (with `{"kind": ..., "value": ...}` saying why).
//!
//! The request bodies and the host id are pure; [`Client`] does the HTTP.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// hostctl's application id for [`host_id`], fixed forever: changing it
/// would give every host a new id and orphan the slots it holds.
const APP_ID: [u8; 16] = [
    0xc6, 0xaf, 0xcf, 0xbc, 0xcb, 0xc5, 0x4a, 0xa1, 0x9f, 0x1d, 0x50, 0xc2, 0x4a, 0x06, 0x94, 0x53,
];

/// The two operations of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    PreReboot,
    SteadyState,
}

impl Op {
    pub fn path(self) -> &'static str {
        match self {
            Op::PreReboot => "/v1/pre-reboot",
            Op::SteadyState => "/v1/steady-state",
        }
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientParams {
    pub id: String,
    pub group: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    pub client_params: ClientParams,
}

/// The body of both requests.
pub fn request_body(id: &str, group: &str) -> String {
    serde_json::to_string(&Request {
        client_params: ClientParams {
            id: id.to_string(),
            group: group.to_string(),
        },
    })
    .expect("a struct of strings serializes")
}

/// Why the server said no, from its error body when it sent one.
pub fn refusal(status: u16, body: &str) -> String {
    #[derive(Deserialize)]
    struct Err {
        kind: Option<String>,
        value: Option<String>,
    }
    match serde_json::from_str::<Err>(body) {
        Ok(Err {
            kind: Some(k),
            value,
        }) => format!("HTTP {status}: {k}: {}", value.unwrap_or_default()),
        _ => {
            let first = body.lines().next().unwrap_or("").trim();
            let first: String = first.chars().take(200).collect();
            format!("HTTP {status} {first}").trim_end().to_string()
        }
    }
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // RFC 2104 with a 64-byte block; keys here are 16 bytes, never hashed.
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The id a host gives the lock server: derived from the machine id the
/// way systemd's `sd_id128_get_machine_app_specific()` does (HMAC-SHA256
/// keyed with the machine id over an application id, cut to 128 bits and
/// made a v4 UUID), so it is stable per host but does not reveal the
/// machine id, which is meant to stay private.
pub fn host_id(machine_id: &str) -> Result<String> {
    let m = machine_id.trim();
    let bytes = hex::decode(m)
        .ok()
        .filter(|b| b.len() == 16)
        .with_context(|| format!("machine id {m:?} is not 32 hex digits"))?;
    let mac = hmac_sha256(&bytes, &APP_ID);
    let mut id = [0u8; 16];
    id.copy_from_slice(&mac[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(hex::encode(id))
}

/// The host id of the running machine, from `/etc/machine-id`.
pub fn this_host_id() -> Result<String> {
    let text = std::fs::read_to_string("/etc/machine-id").context("reading /etc/machine-id")?;
    host_id(&text).context("/etc/machine-id")
}

/// A lock server at `url` (no trailing slash).
pub struct Client {
    pub url: String,
    agent: ureq::Agent,
}

/// What the server answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Granted,
    Refused(String),
}

impl Client {
    pub fn new(url: &str) -> Self {
        let config = ureq::Agent::config_builder()
            // A non-200 answer is the protocol's "no", not a transport error.
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Client {
            url: url.trim_end_matches('/').to_string(),
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// Send `op` for `id` in `group`. An unreachable server is an error;
    /// any HTTP answer is an [`Answer`].
    pub fn send(&self, op: Op, id: &str, group: &str) -> Result<Answer> {
        let url = format!("{}{}", self.url, op.path());
        let mut resp = self
            .agent
            .post(&url)
            .header("fleet-lock-protocol", "true")
            .content_type("application/json")
            .send(request_body(id, group))
            .with_context(|| format!("FleetLock server {url}"))?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(Answer::Granted);
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        Ok(Answer::Refused(refusal(status, &body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_body_is_what_zincati_sends() {
        let body = request_body("abc", "web");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"client_params": {"id": "abc", "group": "web"}})
        );
        assert_eq!(Op::PreReboot.path(), "/v1/pre-reboot");
        assert_eq!(Op::SteadyState.path(), "/v1/steady-state");
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(
            refusal(409, r#"{"kind":"failed_lock","value":"semaphore full"}"#),
            "HTTP 409: failed_lock: semaphore full"
        );
        assert_eq!(refusal(500, "oops\nmore"), "HTTP 500 oops");
        assert_eq!(refusal(503, ""), "HTTP 503");
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_host_id_is_stable_not_the_machine_id_and_a_v4_uuid() {
        let m = "3d1219c7c4c5404aaa1f6d2a48adfda4";
        let id = host_id(m).unwrap();
        assert_eq!(id, host_id(&format!("{m}\n")).unwrap());
        assert_ne!(id, m);
        assert_eq!(id.len(), 32);
        assert_eq!(&id[12..13], "4", "{id}");
        assert!("89ab".contains(&id[16..17]), "{id}");
        assert_ne!(id, host_id("00000000000000000000000000000001").unwrap());
        assert!(host_id("not-a-machine-id").is_err());
    }
}
