//! SQL text, written once with `?` placeholders and rewritten to `$n` for PostgreSQL.

const COLS: &str = "id, sku, name, description, price_minor, currency, stock, category, created_at, updated_at, version";

/// Every statement the catalog runs, in one engine's dialect.
pub(crate) struct Sql {
    pub(crate) get: String,
    /// Indexed by `[has_category][has_search]`.
    /// By category filter, text search and sort ([`crate::Sort::index`]).
    pub(crate) list: [[[String; 3]; 2]; 2],
    pub(crate) insert: String,
    pub(crate) update: String,
    pub(crate) delete: String,
    pub(crate) version_of: String,
    pub(crate) count_inc: String,
    pub(crate) count_dec_for: String,
    pub(crate) categories: String,
    pub(crate) insert_category: String,
    pub(crate) ensure_category: String,
    pub(crate) recount: String,
    pub(crate) count_products: String,
    pub(crate) applied_migrations: String,
    pub(crate) take_stock: String,
    pub(crate) give_stock: String,
    pub(crate) stock_of: String,
    pub(crate) reserve: String,
    pub(crate) shard_meta: String,
    pub(crate) insert_shard_meta: String,
    pub(crate) insert_shard_entry: String,
    pub(crate) shard_entries: String,
    pub(crate) grow_shards: String,
    pub(crate) switch_bucket: String,
    pub(crate) bump_shard_version: String,
    pub(crate) shard_moves: String,
    pub(crate) insert_shard_move: String,
    pub(crate) take_shard_move: String,
    pub(crate) touch_shard_move: String,
    pub(crate) release_shard_move: String,
    pub(crate) shard_move: String,
    pub(crate) delete_shard_move: String,
    pub(crate) unreserve: String,
    pub(crate) stale_reservations: String,
    /// Prefix of the multi-row seed insert; rows are appended by a query builder.
    pub(crate) bulk_insert_prefix: String,
    pub(crate) bulk_insert_suffix: String,
}

impl Sql {
    pub(crate) fn new(postgres: bool) -> Sql {
        let like = if postgres { "ILIKE" } else { "LIKE" };
        let p = |s: String| if postgres { dollar_params(&s) } else { s };
        // Keyset pagination: by id, or by (price, id) as a row value (an index range on both
        // engines: products_price_id and products_category_price_id).
        let list = |cat: bool, search: bool, sort: usize| {
            let (after, order) = match sort {
                0 => ("id > ?", "id"),
                1 => ("(price_minor, id) > (?, ?)", "price_minor, id"),
                _ => ("(price_minor, id) < (?, ?)", "price_minor DESC, id DESC"),
            };
            let mut s = format!("SELECT {COLS} FROM products WHERE {after}");
            if cat {
                s.push_str(" AND category = ?");
            }
            if search {
                s.push_str(&format!(" AND name {like} ? ESCAPE '\\'"));
            }
            s.push_str(&format!(" ORDER BY {order} LIMIT ?"));
            p(s)
        };
        let sorts = |cat: bool, search: bool| {
            [
                list(cat, search, 0),
                list(cat, search, 1),
                list(cat, search, 2),
            ]
        };
        Sql {
            get: p(format!("SELECT {COLS} FROM products WHERE id = ?")),
            list: [
                [sorts(false, false), sorts(false, true)],
                [sorts(true, false), sorts(true, true)],
            ],
            insert: p(format!(
                "INSERT INTO products (sku, name, description, price_minor, currency, stock, category, created_at, updated_at, version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1) RETURNING {COLS}"
            )),
            update: p(format!(
                "UPDATE products SET sku = COALESCE(?, sku), name = COALESCE(?, name), \
                 description = COALESCE(?, description), price_minor = COALESCE(?, price_minor), \
                 currency = COALESCE(?, currency), stock = COALESCE(?, stock), category = COALESCE(?, category), \
                 updated_at = ?, version = version + 1 \
                 WHERE id = ? AND version = COALESCE(?, version) RETURNING {COLS}"
            )),
            delete: p("DELETE FROM products WHERE id = ? AND version = COALESCE(?, version)".into()),
            version_of: p("SELECT version FROM products WHERE id = ?".into()),
            take_stock: p(
                "UPDATE products SET stock = stock - ?, version = version + 1, updated_at = ? \
                 WHERE id = ? AND stock >= ? RETURNING id, name, price_minor, currency, version, category"
                    .into(),
            ),
            give_stock: p(
                "UPDATE products SET stock = stock + ?, version = version + 1, updated_at = ? \
                 WHERE id = ? RETURNING version"
                    .into(),
            ),
            stock_of: p("SELECT stock FROM products WHERE id = ?".into()),
            shard_meta: "SELECT version, shards FROM shard_map_meta WHERE id = 1".into(),
            insert_shard_meta: p("INSERT INTO shard_map_meta (id, version, shards) VALUES (1, ?, ?)".into()),
            insert_shard_entry: p("INSERT INTO shard_map (bucket, shard) VALUES (?, ?)".into()),
            shard_entries: "SELECT bucket, shard FROM shard_map ORDER BY bucket".into(),
            grow_shards: p("UPDATE shard_map_meta SET shards = ?, version = version + 1 WHERE id = 1 AND shards < ?".into()),
            switch_bucket: p("UPDATE shard_map SET shard = ? WHERE bucket = ? AND shard = ?".into()),
            bump_shard_version: "UPDATE shard_map_meta SET version = version + 1 WHERE id = 1".into(),
            shard_moves: "SELECT bucket, from_shard, to_shard, started_at, owner, active_ms FROM shard_moves ORDER BY bucket".into(),
            insert_shard_move: p(
                "INSERT INTO shard_moves (bucket, from_shard, to_shard, started_at, owner, active_ms) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket) DO NOTHING"
                    .into(),
            ),
            take_shard_move: p(
                "UPDATE shard_moves SET owner = ?, active_ms = ? \
                 WHERE bucket = ? AND to_shard = ? AND (owner = ? OR active_ms < ?)"
                    .into(),
            ),
            touch_shard_move: p("UPDATE shard_moves SET active_ms = ? WHERE bucket = ? AND owner = ?".into()),
            release_shard_move: p("UPDATE shard_moves SET active_ms = 0 WHERE bucket = ? AND owner = ?".into()),
            shard_move: p(
                "SELECT bucket, from_shard, to_shard, started_at, owner, active_ms FROM shard_moves WHERE bucket = ?".into(),
            ),
            delete_shard_move: p("DELETE FROM shard_moves WHERE bucket = ? AND owner = ?".into()),
            reserve: p("INSERT INTO order_reservations (order_id, items, created_ms) VALUES (?, ?, ?)".into()),
            unreserve: p("DELETE FROM order_reservations WHERE order_id = ? RETURNING items".into()),
            stale_reservations: p(
                "SELECT order_id FROM order_reservations WHERE created_ms <= ? ORDER BY order_id LIMIT 1000".into(),
            ),
            count_inc: p("UPDATE categories SET product_count = product_count + 1 WHERE slug = ?".into()),
            count_dec_for: p(
                "UPDATE categories SET product_count = product_count - 1 \
                 WHERE slug = (SELECT category FROM products WHERE id = ? AND version = COALESCE(?, version))"
                    .into(),
            ),
            categories: "SELECT slug, name, product_count FROM categories ORDER BY slug".into(),
            insert_category: p(
                "INSERT INTO categories (slug, name, product_count, created_at) VALUES (?, ?, 0, ?) \
                 RETURNING slug, name, product_count"
                    .into(),
            ),
            ensure_category: p(
                "INSERT INTO categories (slug, name, product_count, created_at) VALUES (?, ?, 0, ?) \
                 ON CONFLICT (slug) DO NOTHING"
                    .into(),
            ),
            recount: "UPDATE categories SET product_count = \
                      (SELECT count(*) FROM products WHERE products.category = categories.slug)"
                .into(),
            count_products: "SELECT count(*) FROM products".into(),
            applied_migrations: "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version".into(),
            bulk_insert_prefix: "INSERT INTO products (sku, name, description, price_minor, currency, stock, category, \
                                 created_at, updated_at, version) "
                .into(),
            bulk_insert_suffix: " ON CONFLICT (sku) DO NOTHING".into(),
        }
    }
}

/// Rewrites `?` placeholders to `$1, $2, ...` (no statement here has a `?` inside a string literal).
pub(crate) fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// Escapes `%`, `_` and `\` so user text matches literally inside a LIKE pattern.
pub(crate) fn like_contains(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            dollar_params("a = ? AND b = COALESCE(?, b)"),
            "a = $1 AND b = COALESCE($2, b)"
        );
        assert!(Sql::new(true).list[1][1][0].contains("ILIKE $3"));
        assert!(
            Sql::new(true).list[1][1][2].contains("(price_minor, id) < ($1, $2) AND category = $3")
        );
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_contains("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
