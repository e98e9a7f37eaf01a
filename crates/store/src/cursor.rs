use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// An opaque keyset-pagination position: the last id a page returned.
///
/// Encoded as URL-safe base64 of `v1:<id>`; clients must treat it as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub(crate) after_id: i64,
}

impl Cursor {
    /// A cursor positioned after `id`.
    pub fn after(id: i64) -> Self {
        Cursor { after_id: id }
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}", self.after_id))
    }

    /// Parses the text form, or says why it is not a cursor.
    pub fn decode(text: &str) -> Result<Self, String> {
        let bad = || {
            "cursor is not valid: pass the next_cursor value of a previous page unchanged"
                .to_owned()
        };
        if text.len() > 64 {
            return Err(bad());
        }
        let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let raw = std::str::from_utf8(&raw).map_err(|_| bad())?;
        let id = raw
            .strip_prefix("v1:")
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(bad)?;
        if id < 0 {
            return Err(bad());
        }
        Ok(Cursor { after_id: id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let c = Cursor::after(42);
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in ["", "!!", "djE6LTE", "eHl6", &"A".repeat(100)] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
