/// What went wrong in the store, in terms a handler can map to a response.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist.
    #[error("not found")]
    NotFound,
    /// A unique value is taken.
    #[error("{0}")]
    Conflict(String),
    /// The row changed since the version the caller read.
    #[error("version mismatch: the current version is {current}")]
    VersionMismatch {
        /// The version now stored.
        current: i64,
    },
    /// An order asks for more than the stock.
    #[error("product {product_id} has {available} in stock, {requested} were asked for")]
    InsufficientStock {
        /// The product.
        product_id: i64,
        /// What is left.
        available: i64,
        /// What was asked for.
        requested: i64,
    },
    /// Another order already has this id (ids of the same millisecond and bucket collide only if their
    /// 12-bit salts do): place the order again under a new id.
    #[error("order id {0} is already taken by another order")]
    OrderIdTaken(i64),
    /// An order names a product that does not exist.
    #[error("product {0} does not exist")]
    UnknownProduct(i64),
    /// The product names a category that does not exist.
    #[error("category \"{0}\" does not exist")]
    UnknownCategory(String),
    /// The database is unreachable, overloaded or timed out; worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database could not be opened or migrated.
    #[error("{context}: {source}")]
    Setup {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Anything else: a bug or a broken database.
    #[error("database error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether a write that failed this way may have taken effect all the same: the connection failed
    /// while the statement ran, so the server may have committed it and the answer been lost. Failures
    /// that sent nothing (no connection to be had, a database error the server answered) say no.
    pub fn outcome_unknown(&self) -> bool {
        let (StoreError::Unavailable(e) | StoreError::Other(e)) = self else {
            return false;
        };
        matches!(
            e.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed)
        )
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(Box::new(e)),
            sqlx::Error::Database(db) if is_busy(db.as_ref()) => {
                StoreError::Unavailable(Box::new(e))
            }
            _ => StoreError::Other(Box::new(e)),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
        match e.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked) => StoreError::Unavailable(Box::new(e)),
            _ => StoreError::Other(Box::new(e)),
        }
    }
}

/// SQLite "database is locked/busy" after the busy timeout, and PostgreSQL's
/// cannot-connect-now / too-many-connections / serialization / statement-timeout classes.
fn is_busy(db: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(
        db.code().as_deref(),
        Some("5" | "6" | "517" | "261" | "57P03" | "53300" | "40001" | "40P01" | "57014")
    )
}

impl StoreError {
    pub(crate) fn setup(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Setup {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

impl StoreError {
    /// A setup failure described by a message alone.
    pub fn setup_msg(message: impl Into<String>) -> Self {
        StoreError::setup("setup", std::io::Error::other(message.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn only_a_connection_lost_mid_statement_leaves_a_write_uncertain() {
        let lost = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(StoreError::from(sqlx::Error::Io(lost)).outcome_unknown());
        assert!(StoreError::from(sqlx::Error::WorkerCrashed).outcome_unknown());
        // Nothing was sent: no connection could be had.
        assert!(!StoreError::from(sqlx::Error::PoolTimedOut).outcome_unknown());
        assert!(!StoreError::from(sqlx::Error::PoolClosed).outcome_unknown());
        assert!(!StoreError::OrderIdTaken(7).outcome_unknown());
        assert!(!StoreError::Unavailable("a fenced bucket".into()).outcome_unknown());
    }
}
