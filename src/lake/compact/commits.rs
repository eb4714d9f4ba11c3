//! Where a staged compaction commit goes: the SQL catalog's pointer table
//! (a compare-and-set of the metadata location, as the SQL catalog's own
//! commits do), or a REST catalog server's commit endpoint.

use iceberg::TableIdent;
use iceberg::table::Table;

use super::Staged;
use crate::lake::LakeError;
use crate::lake::rest_commit::RestCommits;

/// Where a staged commit is committed: the SQL catalog's pointer table, or
/// a REST catalog's commit endpoint.
#[derive(Clone, Copy)]
pub enum Commits<'a> {
    Sql(&'a CatalogDb),
    Rest(&'a RestCommits),
}

impl<'a> From<&'a CatalogDb> for Commits<'a> {
    fn from(db: &'a CatalogDb) -> Self {
        Commits::Sql(db)
    }
}

impl<'a> From<&'a RestCommits> for Commits<'a> {
    fn from(rest: &'a RestCommits) -> Self {
        Commits::Rest(rest)
    }
}

impl Commits<'_> {
    /// Commits `staged`, sealed on `table`: `false` when another commit
    /// landed first.
    pub(super) async fn commit(
        self,
        ident: &TableIdent,
        table: &Table,
        staged: &Staged,
    ) -> Result<bool, LakeError> {
        match self {
            Commits::Sql(db) => {
                let old = table
                    .metadata_location()
                    .ok_or_else(|| LakeError::Catalog(format!("{ident} has no metadata file")))?;
                db.swap(ident, old, &staged.location).await
            }
            Commits::Rest(rest) => {
                let snapshot = staged
                    .snapshot
                    .clone()
                    .ok_or_else(|| LakeError::Catalog(format!("{ident}: nothing sealed")))?;
                Ok(rest
                    .commit_snapshot(ident, table.metadata(), snapshot)
                    .await?)
            }
        }
    }

    /// Whether a sealed commit writes the table's next metadata file: on a
    /// REST catalog the server writes it.
    pub(super) fn writes_metadata(self) -> bool {
        matches!(self, Commits::Sql(_))
    }
}

/// The SQL catalog's table of metadata pointers, for the compare-and-set.
pub struct CatalogDb {
    pool: DbPool,
    catalog_name: String,
}

/// The SQL catalog's database: typed pools rather than sqlx's `Any`, whose
/// placeholders differ per database anyway.
enum DbPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// The pointer swap of `update_table` in iceberg-catalog-sql 0.10, per
/// placeholder style.
const SWAP_SQLITE: &str = "UPDATE iceberg_tables
     SET metadata_location = ?, previous_metadata_location = ?
     WHERE catalog_name = ?
       AND table_name = ?
       AND table_namespace = ?
       AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)
       AND metadata_location = ?";
const SWAP_POSTGRES: &str = "UPDATE iceberg_tables
     SET metadata_location = $1, previous_metadata_location = $2
     WHERE catalog_name = $3
       AND table_name = $4
       AND table_namespace = $5
       AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)
       AND metadata_location = $6";

/// Connections of the swap's own pool on PostgreSQL: it runs one statement
/// at a time, and every daemon of a group holds its pools open.
const POSTGRES_SWAP_CONNECTIONS: u32 = 2;

impl CatalogDb {
    /// The catalog database of `cfg` when it is a SQL catalog (SQLite, the
    /// default, or PostgreSQL); `None` for a REST catalog, whose commits
    /// only its server makes.
    pub async fn open(cfg: &crate::config::Config) -> Result<Option<Self>, LakeError> {
        if cfg.lake.catalog != crate::config::CatalogKind::Sql {
            return Ok(None);
        }
        let uri = cfg.catalog_uri();
        let pool = match crate::lake::sql_backend(&uri) {
            Some(crate::lake::SqlBackend::Sqlite) => DbPool::Sqlite(
                sqlx::SqlitePool::connect(&uri)
                    .await
                    .map_err(|e| LakeError::Catalog(format!("opening {uri}: {e}")))?,
            ),
            Some(crate::lake::SqlBackend::Postgres) => DbPool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(POSTGRES_SWAP_CONNECTIONS)
                    .connect(&uri)
                    .await
                    .map_err(|e| {
                        LakeError::Catalog(format!("opening {}: {e}", crate::lake::redact(&uri)))
                    })?,
            ),
            None => return Ok(None),
        };
        Ok(Some(Self {
            pool,
            catalog_name: cfg.lake.catalog_name.clone(),
        }))
    }

    /// Points `ident` at `new` if it still points at `old`; `false` if
    /// another commit moved it first. The statement is the SQL catalog's
    /// own (`update_table` in iceberg-catalog-sql 0.10).
    pub(crate) async fn swap(
        &self,
        ident: &TableIdent,
        old: &str,
        new: &str,
    ) -> Result<bool, LakeError> {
        let namespace = ident.namespace().join(".");
        let fail = |e: sqlx::Error| LakeError::Catalog(format!("swapping {ident}'s metadata: {e}"));
        let rows = match &self.pool {
            DbPool::Sqlite(pool) => sqlx::query(SWAP_SQLITE)
                .bind(new)
                .bind(old)
                .bind(&self.catalog_name)
                .bind(ident.name())
                .bind(&namespace)
                .bind(old)
                .execute(pool)
                .await
                .map_err(fail)?
                .rows_affected(),
            DbPool::Postgres(pool) => sqlx::query(SWAP_POSTGRES)
                .bind(new)
                .bind(old)
                .bind(&self.catalog_name)
                .bind(ident.name())
                .bind(&namespace)
                .bind(old)
                .execute(pool)
                .await
                .map_err(fail)?
                .rows_affected(),
        };
        Ok(rows == 1)
    }
}
