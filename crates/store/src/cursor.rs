use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The order of a product listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Sort {
    /// By id (oldest first): the default.
    #[default]
    Id,
    /// Cheapest first (by price in minor units, then id).
    PriceAsc,
    /// Dearest first.
    PriceDesc,
}

impl Sort {
    /// `id`, `price` or `-price`.
    pub fn parse(s: &str) -> Result<Sort, String> {
        match s {
            "id" => Ok(Sort::Id),
            "price" => Ok(Sort::PriceAsc),
            "-price" => Ok(Sort::PriceDesc),
            _ => Err(format!(
                "sort must be id, price or -price (got {:?})",
                s.chars().take(20).collect::<String>()
            )),
        }
    }

    /// The text [`Sort::parse`] takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Id => "id",
            Sort::PriceAsc => "price",
            Sort::PriceDesc => "-price",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// An opaque keyset-pagination position: the last row a page returned (its id, and its price when the
/// listing is sorted by price).
///
/// Encoded as URL-safe base64 of `v1:<id>` or `v2:<price>:<id>`; clients must treat it as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub(crate) after_id: i64,
    pub(crate) price: Option<i64>,
}

impl Cursor {
    /// A cursor positioned after `id` (a listing by id).
    pub fn after(id: i64) -> Self {
        Cursor {
            after_id: id,
            price: None,
        }
    }

    /// A cursor positioned after the product at `price`, `id` (a listing by price).
    pub fn after_price(price: i64, id: i64) -> Self {
        Cursor {
            after_id: id,
            price: Some(price),
        }
    }

    /// Whether this cursor continues a listing in `sort` order.
    pub fn fits(&self, sort: Sort) -> bool {
        self.price.is_some() == (sort != Sort::Id)
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        match self.price {
            None => URL_SAFE_NO_PAD.encode(format!("v1:{}", self.after_id)),
            Some(p) => URL_SAFE_NO_PAD.encode(format!("v2:{p}:{}", self.after_id)),
        }
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
        if let Some(rest) = raw.strip_prefix("v2:") {
            let (price, id) = rest.split_once(':').ok_or_else(bad)?;
            let price = price.parse::<i64>().map_err(|_| bad())?;
            let id = id.parse::<i64>().map_err(|_| bad())?;
            if id < 0 || price < 0 {
                return Err(bad());
            }
            return Ok(Cursor::after_price(price, id));
        }
        let id = raw
            .strip_prefix("v1:")
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(bad)?;
        if id < 0 {
            return Err(bad());
        }
        Ok(Cursor::after(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let c = Cursor::after(42);
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        let p = Cursor::after_price(1999, 42);
        assert_eq!(Cursor::decode(&p.encode()), Ok(p));
        assert!(c.fits(Sort::Id) && !c.fits(Sort::PriceAsc));
        assert!(p.fits(Sort::PriceDesc) && !p.fits(Sort::Id));
        for s in [Sort::Id, Sort::PriceAsc, Sort::PriceDesc] {
            assert_eq!(Sort::parse(s.as_str()), Ok(s));
        }
        assert!(Sort::parse("name").is_err());
        for bad in ["", "!!", "djE6LTE", "eHl6", &"A".repeat(100)] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
