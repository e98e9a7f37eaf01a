-- Listings sorted by price page through (price, id) as keyset ranges, with or without a category.
CREATE INDEX products_price_id ON products (price_minor, id);
CREATE INDEX products_category_price_id ON products (category, price_minor, id);
