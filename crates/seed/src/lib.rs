//! Deterministic demo catalog behind `tenfold seed`.
//!
//! Role: generate a realistic catalog (categories, names, descriptions, prices, stock) from a seed and
//! insert it in batches.
//!
//! Invariant: the same `(products, seed)` always produces the same catalog, and product `n` always has
//! SKU `TF-nnnnnnnn`; inserts skip SKUs that exist, so seeding twice adds nothing the second time.
//! Entry points: [`seed`], [`generate`], [`CATEGORIES`].

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tenfold_catalog::{
    CategoryName, CategorySlug, Money, NewCategory, NewProduct, NewProductInput, ValidationErrors,
};
use tenfold_store::{Store, StoreError};

/// Rows per insert statement: 10 columns x 1,000 rows stays under every engine's parameter limit.
const BATCH: u64 = 1_000;

/// The demo categories: slug, name, typical price in cents, and the nouns sold there.
pub const CATEGORIES: &[(&str, &str, i64, &[&str])] = &[
    (
        "lighting",
        "Lighting",
        6_000,
        &[
            "Desk Lamp",
            "Floor Lamp",
            "Pendant Light",
            "Wall Sconce",
            "String Lights",
            "Lantern",
        ],
    ),
    (
        "furniture",
        "Furniture",
        25_000,
        &[
            "Armchair",
            "Bookshelf",
            "Side Table",
            "Stool",
            "Desk",
            "Bench",
            "Sideboard",
        ],
    ),
    (
        "kitchen",
        "Kitchen",
        3_000,
        &[
            "Chef Knife",
            "Cutting Board",
            "Saucepan",
            "Teapot",
            "Mixing Bowl",
            "Spice Rack",
        ],
    ),
    (
        "garden-tools",
        "Garden Tools",
        2_500,
        &[
            "Trowel",
            "Pruning Shears",
            "Watering Can",
            "Rake",
            "Hose Reel",
            "Planter",
        ],
    ),
    (
        "audio",
        "Audio",
        12_000,
        &[
            "Headphones",
            "Bookshelf Speaker",
            "Turntable",
            "Soundbar",
            "Earbuds",
            "Radio",
        ],
    ),
    (
        "outdoor",
        "Outdoor",
        9_000,
        &[
            "Tent",
            "Sleeping Bag",
            "Camping Stove",
            "Backpack",
            "Hammock",
            "Cooler",
        ],
    ),
    (
        "stationery",
        "Stationery",
        900,
        &[
            "Notebook",
            "Fountain Pen",
            "Pencil Case",
            "Desk Organizer",
            "Planner",
            "Sketchbook",
        ],
    ),
    (
        "bath",
        "Bath",
        1_800,
        &[
            "Towel Set",
            "Bath Mat",
            "Soap Dish",
            "Shower Caddy",
            "Bathrobe",
            "Toothbrush Holder",
        ],
    ),
    (
        "textiles",
        "Textiles",
        4_000,
        &[
            "Throw Blanket",
            "Cushion Cover",
            "Rug",
            "Curtain Panel",
            "Duvet Cover",
            "Table Runner",
        ],
    ),
    (
        "toys",
        "Toys",
        2_200,
        &[
            "Wooden Train",
            "Puzzle",
            "Building Blocks",
            "Plush Bear",
            "Kite",
            "Marble Run",
        ],
    ),
    (
        "cycling",
        "Cycling",
        5_500,
        &[
            "Bike Light",
            "Helmet",
            "Saddle Bag",
            "Bike Lock",
            "Water Bottle Cage",
            "Mini Pump",
        ],
    ),
    (
        "coffee",
        "Coffee",
        3_500,
        &[
            "Pour-Over Dripper",
            "Burr Grinder",
            "Espresso Cups",
            "French Press",
            "Kettle",
            "Coffee Scale",
        ],
    ),
];

const ADJECTIVES: &[&str] = &[
    "Classic",
    "Compact",
    "Nordic",
    "Rustic",
    "Modern",
    "Vintage",
    "Deluxe",
    "Everyday",
    "Minimal",
    "Sturdy",
    "Folding",
    "Handmade",
    "Heritage",
    "Urban",
    "Coastal",
    "Alpine",
    "Studio",
    "Travel",
    "Premium",
    "Essential",
];
const MATERIALS: &[&str] = &[
    "Oak",
    "Walnut",
    "Bamboo",
    "Steel",
    "Brass",
    "Ceramic",
    "Linen",
    "Wool",
    "Cotton",
    "Copper",
    "Glass",
    "Cork",
    "Leather",
    "Aluminium",
    "Stoneware",
    "Birch",
    "Recycled",
    "Cast Iron",
    "Maple",
    "Rattan",
];
const COLOURS: &[&str] = &[
    "Black",
    "White",
    "Sage",
    "Terracotta",
    "Navy",
    "Sand",
    "Charcoal",
    "Ochre",
    "Teal",
    "Natural",
];
const PHRASES: &[&str] = &[
    "Built to last for years of daily use.",
    "Designed in a small studio and made in limited runs.",
    "Easy to clean and simple to care for.",
    "Ships flat-packed and assembles in minutes.",
    "Made from responsibly sourced materials.",
    "A favourite of our customers for its understated look.",
    "Backed by a five-year guarantee.",
    "Pairs well with the rest of the collection.",
    "Light enough to move, solid enough to stay put.",
    "Finished by hand, so each piece is slightly different.",
];

/// What a seeding run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    /// Categories inserted (those that existed are skipped).
    pub categories_added: u64,
    /// Products inserted (SKUs that existed are skipped).
    pub products_added: u64,
    /// Products in the catalog afterwards.
    pub products_total: i64,
}

/// The demo categories as validated values.
pub fn categories() -> Vec<NewCategory> {
    CATEGORIES
        .iter()
        .filter_map(|(slug, name, _, _)| {
            Some(NewCategory {
                slug: CategorySlug::parse(slug).ok()?,
                name: CategoryName::parse(name).ok()?,
            })
        })
        .collect()
}

/// Product number `n` (0-based) of the catalog of `seed`: the same inputs always give the same product.
pub fn generate(n: u64, seed: u64) -> Result<NewProduct, ValidationErrors> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (slug, _, typical, nouns) = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
    let noun = nouns[rng.random_range(0..nouns.len())];
    let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let material = MATERIALS[rng.random_range(0..MATERIALS.len())];
    let colour = COLOURS[rng.random_range(0..COLOURS.len())];
    let name = format!("{adjective} {material} {noun} — {colour}");
    let mut description = format!(
        "A {} {} in {} {}.",
        adjective.to_lowercase(),
        noun.to_lowercase(),
        colour.to_lowercase(),
        material.to_lowercase()
    );
    for _ in 0..rng.random_range(1..=3) {
        description.push(' ');
        description.push_str(PHRASES[rng.random_range(0..PHRASES.len())]);
    }
    // Prices spread log-uniformly from a third to three times the category's typical price, ending in 99 or 49.
    let factor: f64 = rng.random_range(-1.1f64..1.1).exp();
    let cents = ((typical as f64 * factor) as i64 / 100).max(1) * 100
        - if rng.random_bool(0.7) { 1 } else { 51 };
    let stock = if rng.random_bool(0.05) {
        0
    } else {
        rng.random_range(1..=500)
    };
    NewProduct::parse(&NewProductInput {
        sku: format!("TF-{n:08}"),
        name,
        description,
        price: Money {
            amount_minor: cents.max(49),
            currency: "EUR".into(),
        },
        stock,
        category: slug.into(),
    })
}

/// Seeds `products` products from `seed` into `store`, with a progress bar on a terminal when `progress`.
pub async fn seed(
    store: &Store,
    products: u64,
    seed: u64,
    progress: bool,
) -> Result<SeedReport, StoreError> {
    let categories_added = store.ensure_categories(&categories()).await?;
    let bar = if progress {
        ProgressBar::new(products)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} seeding [{bar:40}] {human_pos}/{human_len} products ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut products_added = 0;
    let mut start = 0;
    // Generation of the next batch overlaps with the insert of the current one.
    let gen = move |from: u64| {
        tokio::task::spawn_blocking(move || {
            (from..(from + BATCH).min(products))
                .map(|n| generate(n, seed))
                .collect::<Result<Vec<_>, _>>()
        })
    };
    let mut next = (start < products).then(|| gen(start));
    while let Some(pending) = next.take() {
        let batch = pending
            .await
            .map_err(|e| StoreError::setup_msg(format!("generating products: {e}")))?
            .map_err(|e| {
                StoreError::setup_msg(format!("generated an invalid product (a bug): {e}"))
            })?;
        start += batch.len() as u64;
        next = (start < products).then(|| gen(start));
        products_added += store.insert_products_if_absent(&batch).await?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    store.recount_categories().await?;
    let products_total = store.count_products().await?;
    Ok(SeedReport {
        categories_added,
        products_added,
        products_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_valid() {
        for n in 0..5_000 {
            let a = generate(n, 7).expect("valid");
            assert_eq!(a, generate(n, 7).expect("valid"));
            assert_eq!(a.sku.as_str(), format!("TF-{n:08}"));
            assert!(a.price.amount_minor() > 0);
        }
        assert_ne!(
            generate(1, 7).map(|p| p.name),
            generate(1, 8).map(|p| p.name)
        );
    }

    #[test]
    fn every_category_is_used() {
        let used: std::collections::HashSet<_> = (0..2_000)
            .filter_map(|n| generate(n, 1).ok())
            .map(|p| p.category)
            .collect();
        assert_eq!(used.len(), CATEGORIES.len());
    }
}
