-- Catalog: categories and products. Timestamps are RFC 3339 text in UTC.
CREATE TABLE categories (
    slug          TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    -- Denormalized: kept equal to the number of products in the category by every write.
    product_count INTEGER NOT NULL DEFAULT 0 CHECK (product_count >= 0),
    created_at    TEXT NOT NULL
) STRICT;

CREATE TABLE products (
    -- AUTOINCREMENT: an id is never reused after a delete, so a cached ETag can never name another product.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sku         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    price_minor INTEGER NOT NULL CHECK (price_minor >= 0),
    currency    TEXT NOT NULL,
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    category    TEXT NOT NULL REFERENCES categories (slug),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1
) STRICT;

CREATE INDEX products_category_id ON products (category, id);
