//! Why the catalog could not answer, as its callers decide: a URL to fix, a database that cannot
//! be reached (explained by [`super::Catalog::unreachable`]), a record it cannot read. Causes are
//! kept as `source`, never flattened into text.

/// Why a catalog call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The catalog URL names no database this service keeps a catalog in, or is malformed.
    #[error("{0}")]
    BadUrl(String),
    /// The directory of an embedded catalog cannot be created.
    #[error("cannot create {path}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No connection to the catalog database could be opened; the text says why.
    #[error("cannot connect to the catalog database: {0}")]
    Unreachable(String),
    /// The catalog's schema could not be brought up to date.
    #[error("catalog migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A statement failed or the connection broke.
    #[error("the catalog database failed")]
    Database(#[from] sqlx::Error),
    /// A record holds a value this version does not know.
    #[error("the catalog holds a record it cannot read: {0}")]
    Corrupt(String),
    /// The operation lease changed hands while it was being taken; trying again decides.
    #[error("the operation lease was released and taken at once; try again")]
    LeaseRace,
    /// The destination could not be listed (a resync).
    #[error("cannot list the backups at the destination")]
    Destination(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl CatalogError {
    /// Whether no connection could be had within the pool's timeout (the database is down,
    /// unreachable or refuses): then [`super::Catalog::unreachable`] finds out why.
    pub fn is_pool_timeout(&self) -> bool {
        matches!(self, CatalogError::Database(sqlx::Error::PoolTimedOut))
    }

    /// Whether a resync found the destination's directory not created yet (nothing was ever
    /// written there): an empty destination, not a failure.
    pub fn is_destination_not_created(&self) -> bool {
        let CatalogError::Destination(e) = self else {
            return false;
        };
        let first: &(dyn std::error::Error + 'static) = e.as_ref();
        crate::destination::not_created(std::iter::successors(Some(first), |c| c.source()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_as_sources() {
        let e = CatalogError::from(sqlx::Error::PoolTimedOut);
        assert!(e.is_pool_timeout());
        assert_eq!(e.to_string(), "the catalog database failed");
        let line = monoskope_backup_client::error_line(&e);
        assert!(line.starts_with("the catalog database failed: "), "{line}");
        assert!(!CatalogError::Corrupt("state \"x\"".into()).is_pool_timeout());
    }
}
