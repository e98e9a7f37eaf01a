//! `import`: a CSV bulk import of products, with progress, a row-level error report, and resumption from
//! a checkpoint after a crash.
//!
//! The file (`imports/<sha256>.csv`, args `{"key": ...}`) has a header with the columns `sku`, `name`,
//! `description`, `price_minor`, `currency`, `stock`, `category` (any order; others are ignored). Rows
//! are parsed and validated like API input, in batches; valid rows are inserted if their SKU is new (so a
//! batch done twice imports once), invalid rows are reported with their line and fields. After every
//! batch the job saves its checkpoint (the next row, the counts, the first errors); a later attempt
//! resumes there. A file that is not CSV (bad quoting, wrong field counts, not UTF-8, no header) fails the
//! job at once with the line.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use tenfold_blobs::DirBlobs;
use tenfold_catalog::{Money, NewProduct, NewProductInput};
use tenfold_store::Store;

use crate::{Handler, JobCtx, JobError};

/// Rows per batch (one insert statement and one checkpoint each).
pub const BATCH: usize = 500;
/// Row errors kept in the report (all are counted).
pub const MAX_REPORTED: usize = 1000;

const COLUMNS: [&str; 7] = [
    "sku",
    "name",
    "description",
    "price_minor",
    "currency",
    "stock",
    "category",
];

/// The `import` handler.
pub struct ImportProducts {
    blobs: Arc<DirBlobs>,
    store: Store,
}

impl ImportProducts {
    /// The handler over the blob store (where uploads are) and the catalog.
    pub fn new(blobs: Arc<DirBlobs>, store: Store) -> ImportProducts {
        ImportProducts { blobs, store }
    }
}

#[async_trait::async_trait]
impl Handler for ImportProducts {
    async fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, JobError> {
        let key = ctx.job.args["key"]
            .as_str()
            .filter(|k| k.starts_with("imports/") && !k.contains(".."))
            .ok_or_else(|| JobError::Permanent("the job names no import file (args.key)".into()))?;
        let bytes = self
            .blobs
            .read(key)
            .await
            .map_err(|e| JobError::Retry(format!("cannot read {key}: {e}")))?;
        // Parsing is CPU work: off the async runtime, all rows at once (the file is bounded by the
        // upload limit), then inserted batch by batch.
        let rows = tokio::task::spawn_blocking(move || read_rows(&bytes))
            .await
            .map_err(|e| JobError::Retry(format!("the parsing task failed: {e}")))??;
        let cp = ctx.job.checkpoint.clone().unwrap_or(json!({}));
        let resumed_from = cp["row"].as_u64().unwrap_or(0) as usize;
        let mut imported = cp["imported"].as_u64().unwrap_or(0);
        let mut existing = cp["existing"].as_u64().unwrap_or(0);
        let mut error_count = cp["error_count"].as_u64().unwrap_or(0);
        let mut errors: Vec<serde_json::Value> =
            cp["errors"].as_array().cloned().unwrap_or_default();
        let categories: HashSet<String> = self
            .store
            .list_categories()
            .await
            .map_err(|e| JobError::Retry(format!("cannot read the categories: {e}")))?
            .into_iter()
            .map(|c| c.slug.as_str().to_owned())
            .collect();
        let total = rows.len();
        let mut next = resumed_from.min(total);
        while next < total {
            let end = (next + BATCH).min(total);
            let mut batch = Vec::with_capacity(end - next);
            for (line, input, not_numbers) in &rows[next..end] {
                let parsed = NewProduct::parse(input).map_err(|e| {
                    // A number that did not parse is reported as such, not as the value standing in for it.
                    let mut fields: Vec<serde_json::Value> = not_numbers
                        .iter()
                        .map(|(f, raw)| json!({"field": f, "message": format!("must be a whole number (got {raw:?})")}))
                        .collect();
                    fields.extend(
                        e.0.into_iter()
                            .filter(|f| !not_numbers.iter().any(|(n, _)| f.field.starts_with(n)))
                            .map(|f| json!({"field": f.field, "message": f.message})),
                    );
                    fields
                });
                let parsed = parsed.and_then(|p| {
                    if categories.contains(p.category.as_str()) {
                        Ok(p)
                    } else {
                        Err(vec![json!({"field": "category", "message": format!("category \"{}\" does not exist", input.category)})])
                    }
                });
                match parsed {
                    Ok(p) => batch.push(p),
                    Err(fields) => {
                        error_count += 1;
                        if errors.len() < MAX_REPORTED {
                            errors.push(json!({"line": line, "sku": input.sku, "errors": fields}));
                        }
                    }
                }
            }
            let new = self
                .store
                .insert_products_if_absent(&batch)
                .await
                .map_err(|e| JobError::Retry(format!("cannot insert products: {e}")))?;
            imported += new;
            existing += batch.len() as u64 - new;
            next = end;
            ctx.progress((next * 99 / total.max(1)) as u8);
            ctx.checkpoint(&json!({
                "row": next,
                "imported": imported,
                "existing": existing,
                "error_count": error_count,
                "errors": errors,
            }))
            .await?;
        }
        self.store
            .recount_categories()
            .await
            .map_err(|e| JobError::Retry(format!("cannot recount categories: {e}")))?;
        if imported > 0 {
            // Running instances drop their list pages and category counts at once, as after any
            // write through them (a lost announcement leaves lists stale only until their TTL).
            let change = tenfold_cache::Change {
                tags: vec!["categories".into()],
                all_lists: true,
                ..Default::default()
            };
            if let Err(e) = tenfold_cache::announce(self.store.change_feed().as_ref(), change).await
            {
                tracing::warn!(error = %e, "could not tell running instances about the imported products");
            }
        }
        Ok(json!({
            "rows": total,
            "imported": imported,
            "existing": existing,
            "error_count": error_count,
            "errors": errors,
            "resumed_from": resumed_from,
        }))
    }
}

/// Every data row with its line number, or why the file is not a CSV we can read.
/// A row: its line, its input, and the numeric fields that were not numbers (field, text).
type Row = (u64, NewProductInput, Vec<(&'static str, String)>);

fn read_rows(bytes: &[u8]) -> Result<Vec<Row>, JobError> {
    let mut r = csv::ReaderBuilder::new().flexible(false).from_reader(bytes);
    let header = r
        .headers()
        .map_err(|e| JobError::Permanent(format!("the file is not CSV: {e}")))?
        .clone();
    let mut at = [0usize; 7];
    for (i, col) in COLUMNS.iter().enumerate() {
        at[i] = header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(col))
            .ok_or_else(|| {
                JobError::Permanent(format!(
                    "the CSV header lacks the column \"{col}\" (needs: {})",
                    COLUMNS.join(", ")
                ))
            })?;
    }
    let mut out = Vec::new();
    for rec in r.records() {
        let rec =
            rec.map_err(|e| JobError::Permanent(format!("the file is not valid CSV: {e}")))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let get = |i: usize| rec.get(at[i]).unwrap_or("").to_owned();
        let mut not_numbers = Vec::new();
        // A number that does not parse stands in as -1 (which the parser also refuses) and is reported
        // as not a number.
        let mut num = |i: usize, field: &'static str| {
            let raw = get(i);
            raw.trim().parse::<i64>().unwrap_or_else(|_| {
                not_numbers.push((field, raw));
                -1
            })
        };
        let amount_minor = num(3, "price.amount_minor");
        let stock = num(5, "stock");
        out.push((
            line,
            NewProductInput {
                sku: get(0),
                name: get(1),
                description: get(2),
                price: Money {
                    amount_minor,
                    currency: get(4),
                },
                stock,
                category: get(6),
            },
            not_numbers,
        ));
    }
    Ok(out)
}
