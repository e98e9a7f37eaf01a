//! Admin sessions and CSRF tokens for the storefront's forms, both stateless (any instance checks them,
//! nothing is stored).
//!
//! A session is a cookie `tf_admin = s1.<expiry, unix seconds>.<nonce>.<HMAC-SHA256, base64url>` issued
//! when the API key is typed into the sign-in form; HttpOnly, SameSite=Strict, path `/admin`, 8 hours.
//! Its key is derived from the API key, so rotating the key ends every session.
//!
//! CSRF: every page with a form makes sure the browser has a random `tf_csrf` cookie (HttpOnly,
//! SameSite=Strict) and puts HMAC(key, cookie) in a hidden field; a POST is taken only when the field
//! matches the cookie it came with. Another site can neither read the cookie nor compute the field.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "tf_admin";
/// The CSRF cookie.
pub(crate) const CSRF_COOKIE: &str = "tf_csrf";
/// How long a session lasts: 8 hours.
pub(crate) const SESSION_TTL_S: u64 = 8 * 3600;

/// The key sessions and CSRF tokens are signed with.
#[derive(Clone)]
pub(crate) struct SessionKey(HmacSha256);

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SessionKey {
    pub(crate) fn from_api_key(api_key: &str) -> Option<SessionKey> {
        let mut derive = HmacSha256::new_from_slice(b"tenfold admin sessions v1").ok()?;
        derive.update(api_key.as_bytes());
        let key = derive.finalize().into_bytes();
        HmacSha256::new_from_slice(&key).ok().map(SessionKey)
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        let mut m = self.0.clone();
        m.update(payload.as_bytes());
        m
    }

    /// A new session token, valid for [`SESSION_TTL_S`].
    pub(crate) fn issue(&self) -> String {
        let payload = format!(
            "s1.{}.{}",
            now_s() + SESSION_TTL_S,
            URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
        );
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// True for a session token of ours, unaltered and unexpired.
    pub(crate) fn valid(&self, token: &str) -> bool {
        let Some((payload, sig)) = token.rsplit_once('.') else {
            return false;
        };
        let mut parts = payload.split('.');
        let (Some("s1"), Some(exp), Some(_nonce), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(expires) = exp.parse::<u64>() else {
            return false;
        };
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        self.mac(payload).verify_slice(&sig).is_ok() && now_s() < expires
    }

    /// The form field that goes with a CSRF cookie value.
    pub(crate) fn csrf_field(&self, cookie: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&format!("csrf.{cookie}")).finalize().into_bytes())
    }

    /// True when `field` is the one for `cookie` (constant time).
    pub(crate) fn csrf_ok(&self, cookie: &str, field: &str) -> bool {
        let Ok(sig) = URL_SAFE_NO_PAD.decode(field) else {
            return false;
        };
        !cookie.is_empty()
            && self
                .mac(&format!("csrf.{cookie}"))
                .verify_slice(&sig)
                .is_ok()
    }

    /// True when a posted form's CSRF `field` matches the CSRF cookie the request came with.
    pub(crate) fn form_ok(&self, headers: &HeaderMap, field: &str) -> bool {
        self.csrf_ok(cookie(headers, CSRF_COOKIE).unwrap_or(""), field)
    }
}

/// A cookie's value from the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 512)
}

/// `; Secure` when the client reached us over HTTPS (through a TLS-terminating balancer).
fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    if https {
        "; Secure"
    } else {
        ""
    }
}

/// A Set-Cookie header value.
pub(crate) fn set_cookie(
    headers: &HeaderMap,
    name: &str,
    value: &str,
    path: &str,
    max_age: u64,
) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        secure(headers)
    ))
    .ok()
}

/// The request's CSRF cookie, or a new one (with the Set-Cookie header to send).
pub(crate) fn csrf_cookie(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, CSRF_COOKIE) {
        Some(c) => (c.to_owned(), None),
        None => {
            let c = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>());
            let set = set_cookie(headers, CSRF_COOKIE, &c, "/", 24 * 3600);
            (c, set)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_and_expire() {
        let k = SessionKey::from_api_key("secret-key-0123456789").unwrap();
        let t = k.issue();
        assert!(k.valid(&t));
        let other = SessionKey::from_api_key("another-key-0123456789").unwrap();
        assert!(!other.valid(&t), "another key's session");
        let mut tampered = t.clone();
        tampered.replace_range(3..4, if &t[3..4] == "9" { "8" } else { "9" });
        assert!(!k.valid(&tampered), "an altered expiry");
        // An expired one, signed properly.
        let payload = format!("s1.{}.abc", now_s() - 1);
        let sig = URL_SAFE_NO_PAD.encode(k.mac(&payload).finalize().into_bytes());
        assert!(!k.valid(&format!("{payload}.{sig}")));
        assert!(!k.valid("garbage") && !k.valid(""));
    }

    #[test]
    fn a_csrf_field_only_matches_its_cookie() {
        let k = SessionKey::from_api_key("secret-key-0123456789").unwrap();
        let f = k.csrf_field("cookie-a");
        assert!(k.csrf_ok("cookie-a", &f));
        assert!(!k.csrf_ok("cookie-b", &f));
        assert!(!k.csrf_ok("", &k.csrf_field("")));
        assert!(!k.csrf_ok("cookie-a", "not base64 !"));
    }
}
