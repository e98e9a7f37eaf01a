//! Customer tokens: signed, stateless, expiring. Issued with the API key; checked on any instance without
//! a database round trip.
//!
//! Format: `c1.<customer id>.<expiry, unix seconds>.<HMAC-SHA256 of "c1.<id>.<expiry>", base64url>`. The key
//! is derived from the API key (every instance of a deployment has it, so every instance can check every
//! token); rotating the API key revokes every token.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest lifetime a token may be issued for: 30 days.
pub(crate) const MAX_TTL_S: u64 = 30 * 24 * 3600;

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a customer token at all.
    Malformed,
    /// Signed with another key, or altered.
    BadSignature,
    /// Past its expiry.
    Expired,
}

/// The signing key: one per deployment, derived from the API key.
#[derive(Clone)]
pub(crate) struct TokenKey(HmacSha256);

impl TokenKey {
    pub(crate) fn from_api_key(api_key: &str) -> TokenKey {
        // A key of its own (not the API key itself), so a token never reveals anything about the API key.
        let mut derive = HmacSha256::new_from_slice(b"tenfold customer tokens v1")
            .unwrap_or_else(|_| unreachable_mac());
        derive.update(api_key.as_bytes());
        let key = derive.finalize().into_bytes();
        TokenKey(HmacSha256::new_from_slice(&key).unwrap_or_else(|_| unreachable_mac()))
    }

    fn mac(&self, payload: &str) -> Vec<u8> {
        let mut m = self.0.clone();
        m.update(payload.as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// A token for `customer` valid until `expires` (unix seconds).
    pub(crate) fn issue(&self, customer: i64, expires: u64) -> String {
        let payload = format!("c1.{customer}.{expires}");
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&payload));
        format!("{payload}.{sig}")
    }

    /// The customer a token names, if it is ours, unaltered and unexpired at `now` (unix seconds).
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<(i64, u64), TokenError> {
        let mut parts = token.split('.');
        let (Some("c1"), Some(id), Some(exp), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let customer: i64 = id.parse().map_err(|_| TokenError::Malformed)?;
        let expires: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut m = self.0.clone();
        m.update(format!("c1.{customer}.{expires}").as_bytes());
        // Constant-time comparison.
        m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        if now >= expires {
            return Err(TokenError::Expired);
        }
        Ok((customer, expires))
    }
}

/// HMAC accepts keys of any length; this cannot happen.
fn unreachable_mac() -> HmacSha256 {
    #[allow(clippy::unwrap_used)]
    HmacSha256::new_from_slice(&[0u8; 32]).unwrap()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_unaltered_unexpired_and_under_the_same_key() {
        let k = TokenKey::from_api_key("an-api-key-0123456789");
        let t = k.issue(42, 1_000);
        assert_eq!(k.verify(&t, 999), Ok((42, 1_000)));
        assert_eq!(k.verify(&t, 1_000), Err(TokenError::Expired));
        let other = TokenKey::from_api_key("another-key-0123456789");
        assert_eq!(other.verify(&t, 999), Err(TokenError::BadSignature));
        // Another customer or a later expiry with the same signature.
        let sig = t.rsplit('.').next().unwrap_or_default();
        assert_eq!(
            k.verify(&format!("c1.43.1000.{sig}"), 999),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            k.verify(&format!("c1.42.9999.{sig}"), 999),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "c1",
            "c1.42.1000",
            "c2.42.1000.x",
            "c1.x.1000.x",
            "c1.42.1000.!!",
            "c1.42.1000.a.b",
        ] {
            assert_eq!(k.verify(bad, 999), Err(TokenError::Malformed), "{bad}");
        }
    }
}
