//! The static assets (`assets/` in this crate), fingerprinted and precompressed at build time by
//! `build.rs`: `app.css` is served as `/assets/app.<hash>.css`, a name that changes whenever its bytes
//! do, so it is cached for a year as immutable; brotli and gzip copies are ready for clients that
//! accept them.

/// One asset.
#[derive(Debug)]
pub struct Asset {
    /// Its source name (`app.css`).
    pub logical: &'static str,
    /// Its fingerprinted name (`app.1a2b3c4d5e.css`).
    pub name: &'static str,
    /// Its Content-Type.
    pub mime: &'static str,
    /// The bytes.
    pub raw: &'static [u8],
    /// Brotli, quality 11.
    pub br: &'static [u8],
    /// Gzip, level 9.
    pub gz: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The asset served under this fingerprinted name.
pub fn get(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The URL of an asset by its source name (`/assets/app.<hash>.css`).
///
/// # Panics
/// Never for the names this crate's templates use (a test checks each); an unknown name is a bug
/// in a template, caught by that test.
pub fn url(logical: &str) -> String {
    match ASSETS.iter().find(|a| a.logical == logical) {
        Some(a) => format!("/assets/{}", a.name),
        None => format!("/assets/{logical}"),
    }
}

/// Every asset.
pub fn all() -> &'static [Asset] {
    ASSETS
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn every_asset_is_fingerprinted_and_its_compressed_copies_decode_to_it() {
        assert!(!ASSETS.is_empty());
        for a in ASSETS {
            assert!(url(a.logical).ends_with(a.name));
            assert_ne!(a.name, a.logical);
            let mut br = Vec::new();
            brotli::Decompressor::new(a.br, 4096)
                .read_to_end(&mut br)
                .expect("brotli decodes");
            assert_eq!(br, a.raw, "{}", a.name);
            let mut gz = Vec::new();
            flate2::read::GzDecoder::new(a.gz)
                .read_to_end(&mut gz)
                .expect("gzip decodes");
            assert_eq!(gz, a.raw, "{}", a.name);
        }
        for used in ["app.css", "enhance.js"] {
            assert!(ASSETS.iter().any(|a| a.logical == used), "{used}");
        }
    }
}
