//! The Iceberg side: the SQL catalog, the `market` tables, Arrow conversion of
//! records, and commits that carry Kafka offsets in their snapshot summary.

pub mod background;
pub mod bars;
pub mod batch;
pub mod commit;
pub mod compact;
pub mod files;
pub mod gaps;
pub mod last_ids;
pub mod lease;
pub mod maintain;
pub mod orphans;
pub mod owned;
pub mod partition;
pub mod rest_commit;
pub mod scan;
pub mod schema;
pub mod share;
pub mod sigv4;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle,
    SqlCatalogBuilder,
};

pub use crate::config::catalog::{SqlBackend, redact, sql_backend};
use crate::config::{CatalogKind, Config};

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("warehouse {0}: {1}")]
    Warehouse(String, std::io::Error),
    #[error("object store: {0}")]
    Store(#[from] store::StoreError),
    #[error("parquet: {0}")]
    Parquet(String),
    #[error("snapshot {snapshot_id}: bad offsets property: {reason}")]
    Offsets { snapshot_id: i64, reason: String },
    #[error(transparent)]
    Rest(#[from] rest_commit::RestCommitError),
    #[error(transparent)]
    SigV4(#[from] sigv4::SigV4Error),
}

impl LakeError {
    /// Whether retrying the same operation later can succeed: catalog
    /// conflicts and IO are transient, a schema mismatch is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            LakeError::Iceberg(e) => !matches!(
                e.kind(),
                iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported
            ),
            LakeError::Arrow(_) | LakeError::Parquet(_) | LakeError::Offsets { .. } => false,
            // A config or credential that cannot sign stays so.
            LakeError::SigV4(_) => false,
            LakeError::Catalog(_) | LakeError::Warehouse(..) | LakeError::Rest(_) => true,
            LakeError::Store(e) => e.is_retryable(),
        }
    }
}

/// Opens the configured catalog (`lake.catalog`) over the configured
/// warehouse (a local directory or an object store: `store`): the SQL
/// catalog (SQLite by default, or PostgreSQL), or a REST catalog client.
pub async fn open_catalog(cfg: &Config) -> Result<Arc<dyn Catalog>, LakeError> {
    if let Some(warehouse) = cfg.own_warehouse()
        && let store::WarehouseUrl::Local(path) =
            store::WarehouseUrl::parse(&warehouse).map_err(store::StoreError::from)?
    {
        std::fs::create_dir_all(path).map_err(|e| LakeError::Warehouse(warehouse.clone(), e))?;
    }
    if cfg.lake.catalog == CatalogKind::Rest {
        return open_rest_catalog(cfg).await;
    }
    let warehouse = cfg.warehouse();
    if cfg.lake.catalog_uri.is_empty() {
        let dir = cfg.data_dir_abs();
        std::fs::create_dir_all(&dir)
            .map_err(|e| LakeError::Warehouse(dir.display().to_string(), e))?;
    }
    let uri = cfg.catalog_uri();
    // SQLite wants `?` placeholders; PostgreSQL the default `$1` style.
    let bind = match sql_backend(&uri) {
        Some(SqlBackend::Sqlite) => SqlBindStyle::QMark,
        Some(SqlBackend::Postgres) => SqlBindStyle::DollarNumeric,
        None => {
            return Err(LakeError::Catalog(format!(
                "lake.catalog_uri {:?} is neither sqlite:… nor postgres://…",
                redact(&uri)
            )));
        }
    };
    // Validation let through only the pool keys the catalog parses.
    let mut props: HashMap<String, String> = cfg
        .lake
        .catalog_properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    props.insert(SQL_CATALOG_PROP_URI.to_string(), uri.clone());
    props.insert(SQL_CATALOG_PROP_WAREHOUSE.to_string(), warehouse);
    props.insert(SQL_CATALOG_PROP_BIND_STYLE.to_string(), bind.to_string());
    // Opening creates the catalog's two tables if missing. On PostgreSQL,
    // `CREATE TABLE IF NOT EXISTS` run by two daemons starting at once can
    // still fail one of them (a unique violation in pg_type); the second
    // try finds the tables there.
    let attempts = if bind == SqlBindStyle::DollarNumeric {
        3
    } else {
        1
    };
    let factory = store::storage_factory(cfg)?;
    let mut attempt = 1;
    loop {
        let loaded = SqlCatalogBuilder::default()
            .with_storage_factory(factory.clone())
            .load(cfg.lake.catalog_name.clone(), props.clone())
            .await;
        match loaded {
            Ok(catalog) => return Ok(Arc::new(catalog)),
            Err(e) if attempt < attempts => {
                tracing::warn!(attempt, error = %e, "opening the SQL catalog failed; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                return Err(LakeError::Catalog(format!(
                    "opening the SQL catalog {}: {e}",
                    redact(&uri)
                )));
            }
        }
    }
}

/// The REST catalog client: `lake.catalog_uri` is the server, and
/// `lake.catalog_warehouse` (else `lake.warehouse`), when set, the
/// warehouse asked of it (a REST server may name warehouses rather than
/// locate them); `lake.catalog_properties` carry credentials and the like. Nothing is asked of the server here:
/// the client fetches its config on first use.
async fn open_rest_catalog(cfg: &Config) -> Result<Arc<dyn Catalog>, LakeError> {
    use iceberg_catalog_rest::{
        REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE, RestCatalogBuilder,
    };
    let mut props: HashMap<String, String> = cfg
        .lake
        .catalog_properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // With SigV4 the client talks to the signer in front of the server
    // (`sigv4`), with the signer's key; errors still name the server.
    let uri = match sigv4::front(cfg)? {
        Some(front) => {
            let (k, v) = front.header_property();
            props.insert(k, v);
            front.uri
        }
        None => cfg.lake.catalog_uri.clone(),
    };
    props.insert(REST_CATALOG_PROP_URI.to_string(), uri);
    if let Some(w) = cfg.catalog_warehouse() {
        props.insert(REST_CATALOG_PROP_WAREHOUSE.to_string(), w);
    }
    let catalog = RestCatalogBuilder::default()
        .with_storage_factory(store::storage_factory(cfg)?)
        .load(cfg.lake.catalog_name.clone(), props)
        .await
        .map_err(|e| {
            LakeError::Catalog(format!(
                "opening the REST catalog {}: {e}",
                cfg.lake.catalog_uri
            ))
        })?;
    Ok(Arc::new(catalog))
}

/// What `/status` shows of the catalog: its kind and name, where it is
/// (a password in the URI masked), the warehouse, and for a REST catalog
/// the warehouse asked of the server and how the daemon authenticates to
/// it. Never a secret: `lake.catalog_properties` are named by kind only.
pub fn catalog_status(cfg: &Config) -> serde_json::Value {
    let rest = cfg.lake.catalog == CatalogKind::Rest;
    let props = &cfg.lake.catalog_properties;
    let sigv4 = crate::config::catalog::sigv4_props(props).ok().flatten();
    let auth = if !rest {
        None
    } else if sigv4.is_some() {
        Some("sigv4")
    } else if props.contains_key("token") {
        Some("token")
    } else if props.contains_key("credential") {
        Some("oauth2_client_credentials")
    } else {
        Some("none")
    };
    serde_json::json!({
        "kind": if rest { "rest" } else { "sql" },
        "name": cfg.lake.catalog_name,
        "uri": redact(&cfg.catalog_uri()),
        // On REST the server places the tables (in buckets of its own,
        // with S3 Tables); the local default would name a directory
        // that holds none of them.
        "warehouse": cfg.own_warehouse(),
        "catalog_warehouse": if rest { cfg.catalog_warehouse() } else { None },
        "auth": auth,
        "signing_name": sigv4.as_ref().filter(|_| rest).map(|s| s.service.clone()),
        "namespace": cfg.lake.namespace,
    })
}

/// The two tables the daemon writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    Trades,
    DeadLetters,
}

impl TableKind {
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Trades => schema::TRADES_TABLE,
            TableKind::DeadLetters => schema::DEAD_LETTERS_TABLE,
        }
    }
}

pub fn table_ident(cfg: &Config, kind: TableKind) -> TableIdent {
    TableIdent::new(
        NamespaceIdent::new(cfg.lake.namespace.clone()),
        kind.name().to_string(),
    )
}

/// Commits `trades` to `ident` as the writers do, with the offsets of one
/// partition at `next`, for tests.
#[cfg(test)]
pub(crate) async fn append_trades(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    schema: &arrow::datatypes::SchemaRef,
    trades: &[crate::model::TradeV2],
    next: i64,
) {
    let batch = batch::trades_batch(schema, trades).unwrap();
    let offsets = commit::one_partition(next);
    commit::append(catalog, ident, Some(&batch), &offsets, 1 << 20)
        .await
        .unwrap();
}

/// Every file under `dir`, at any depth, for tests that look at what a
/// local lake holds.
#[cfg(test)]
pub(crate) fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

/// The bytes of the files under `before` (their sizes, by
/// [`files_under`] at some earlier point) that are gone from `dir` now:
/// what a deletion freed, for tests.
#[cfg(test)]
pub(crate) fn bytes_gone(
    before: &std::collections::HashMap<std::path::PathBuf, u64>,
    dir: &std::path::Path,
) -> u64 {
    let now: std::collections::HashSet<_> = files_under(dir).into_iter().collect();
    before
        .iter()
        .filter(|(p, _)| !now.contains(*p))
        .map(|(_, n)| n)
        .sum()
}

/// The size of each file under `dir`, for [`bytes_gone`].
#[cfg(test)]
pub(crate) fn sizes_under(
    dir: &std::path::Path,
) -> std::collections::HashMap<std::path::PathBuf, u64> {
    files_under(dir)
        .into_iter()
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.len())))
        .collect()
}

/// The rows a scan of `ident`'s current snapshot reads, for tests.
#[cfg(test)]
pub(crate) async fn rows_of(catalog: &dyn Catalog, ident: &TableIdent) -> usize {
    use futures::TryStreamExt;
    let table = catalog.load_table(ident).await.unwrap();
    let stream = table.scan().build().unwrap().to_arrow().await.unwrap();
    let batches: Vec<arrow::array::RecordBatch> = stream.try_collect().await.unwrap();
    batches.iter().map(|b| b.num_rows()).sum()
}

/// A fresh lake under `dir` with its trades table, for tests: the config,
/// the catalog, the table, its ident and its Arrow schema.
#[cfg(test)]
pub(crate) async fn test_lake(
    dir: &std::path::Path,
) -> (
    Config,
    Arc<dyn Catalog>,
    Table,
    TableIdent,
    arrow::datatypes::SchemaRef,
) {
    let cfg = Config::default().under(dir);
    let catalog = open_catalog(&cfg).await.unwrap();
    let table = ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
        .await
        .unwrap();
    let schema = batch::arrow_schema(table.metadata().current_schema()).unwrap();
    let ident = table_ident(&cfg, TableKind::Trades);
    (cfg, catalog, table, ident, schema)
}

/// `market.ohlcv_1m` (`bars`).
pub fn bars_ident(cfg: &Config) -> TableIdent {
    TableIdent::new(
        NamespaceIdent::new(cfg.lake.namespace.clone()),
        schema::BARS_TABLE.to_string(),
    )
}

/// Loads a table, creating the namespace and table on first use. Two
/// processes racing to create it is fine: the loser loads the winner's table.
pub async fn ensure_table(
    catalog: &dyn Catalog,
    cfg: &Config,
    kind: TableKind,
) -> Result<Table, LakeError> {
    let (schema, spec) = match kind {
        TableKind::Trades => (schema::trades_schema()?, schema::trades_partition_spec()?),
        TableKind::DeadLetters => (
            schema::dead_letters_schema()?,
            schema::dead_letters_partition_spec()?,
        ),
    };
    ensure(catalog, &table_ident(cfg, kind), schema, spec).await
}

/// Every table the daemon writes, made where missing: trades, dead
/// letters, gaps, and the minute bars when `lake.bars` is on.
pub async fn ensure_every_table(catalog: &dyn Catalog, cfg: &Config) -> Result<(), LakeError> {
    for kind in [TableKind::Trades, TableKind::DeadLetters] {
        ensure_table(catalog, cfg, kind).await?;
    }
    if cfg.lake.bars {
        bars::ensure_table(catalog, cfg).await?;
    }
    gaps::ensure_table(catalog, cfg).await?;
    Ok(())
}

/// Adds to `table` the columns of `wanted` it lacks, through Iceberg's
/// schema update: a table an older build made gains the columns this build
/// writes. Only optional top-level columns are ever added (their old rows
/// read null); a missing required column is a build defect, refused.
pub async fn evolve(
    catalog: &dyn Catalog,
    table: Table,
    wanted: &iceberg::spec::Schema,
) -> Result<Table, LakeError> {
    use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};

    let current = table.metadata().current_schema().clone();
    let missing: Vec<_> = wanted
        .as_struct()
        .fields()
        .iter()
        .filter(|f| current.field_by_name(&f.name).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(table);
    }
    let tx = Transaction::new(&table);
    let mut action = tx.update_schema();
    for f in &missing {
        if f.required {
            return Err(LakeError::Catalog(format!(
                "{}: column {} is required and cannot be added to rows already there",
                table.identifier(),
                f.name
            )));
        }
        action = action.add_column(AddColumn::optional(&f.name, (*f.field_type).clone()));
    }
    let mut table = action.apply(tx)?.commit(catalog).await?;
    // A snapshot keeps the schema it was committed under, and Iceberg's
    // reader (the `market.trades` of SQL, pyiceberg's default scan) reads
    // the current snapshot with it: until the next commit nobody could
    // select the new column. An empty commit carrying the recorded offsets
    // unchanged makes the current snapshot one of the new schema; the
    // rows and the consumer's start are the same.
    if let Some((_, offsets)) = commit::current_offsets(&table)? {
        commit::append(catalog, table.identifier(), None, &offsets, 0).await?;
        table = catalog.load_table(table.identifier()).await?;
    }
    let names: Vec<&str> = missing.iter().map(|f| f.name.as_str()).collect();
    tracing::info!(table = %table.identifier(), columns = ?names, schema_id = table.metadata().current_schema_id(),
        "table schema evolved");
    Ok(table)
}

/// Loads `ident`, creating its namespace and the table with `schema` and
/// `spec` on first use.
pub async fn ensure(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    schema: iceberg::spec::Schema,
    spec: iceberg::spec::UnboundPartitionSpec,
) -> Result<Table, LakeError> {
    if catalog.table_exists(ident).await? {
        let table = catalog.load_table(ident).await?;
        return evolve(catalog, table, &schema).await;
    }
    let ns = ident.namespace().clone();
    if !catalog.namespace_exists(&ns).await?
        && let Err(e) = catalog.create_namespace(&ns, HashMap::new()).await
        && !catalog.namespace_exists(&ns).await?
    {
        return Err(e.into());
    }
    let creation = TableCreation::builder()
        .name(ident.name().to_string())
        .schema(schema)
        .partition_spec(spec)
        .properties(HashMap::from([
            ("write.format.default".to_string(), "parquet".to_string()),
            (
                "write.parquet.compression-codec".to_string(),
                "zstd".to_string(),
            ),
        ]))
        .build();
    match catalog.create_table(&ns, creation).await {
        Ok(t) => Ok(t),
        Err(e) => {
            if catalog.table_exists(ident).await? {
                Ok(catalog.load_table(ident).await?)
            } else {
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod catalog_tests {
    use super::*;

    #[test]
    fn the_status_names_the_catalog_and_never_a_secret() {
        let mut cfg = Config::default().under(std::path::Path::new("/data"));
        cfg.lake.catalog_uri = "postgres://u:hunter2@db:5432/lake".into();
        let s = catalog_status(&cfg);
        assert_eq!(s["kind"], "sql");
        assert_eq!(s["uri"], "postgres://u:***@db:5432/lake");
        assert_eq!(s["warehouse"], "file:///data/warehouse");
        assert!(s["auth"].is_null() && s["catalog_warehouse"].is_null());
        cfg.lake.catalog = CatalogKind::Rest;
        cfg.lake.catalog_uri = "https://cat.example/api".into();
        cfg.lake.warehouse = "s3://bucket/tables".into();
        cfg.lake.catalog_warehouse = "analytics".into();
        cfg.lake
            .catalog_properties
            .insert("credential".into(), "id:hunter2".into());
        let s = catalog_status(&cfg);
        assert_eq!(
            (&s["kind"], &s["auth"], &s["catalog_warehouse"]),
            (
                &serde_json::json!("rest"),
                &serde_json::json!("oauth2_client_credentials"),
                &serde_json::json!("analytics")
            )
        );
        assert!(!s.to_string().contains("hunter2"), "{s}");
        assert!(s["signing_name"].is_null(), "{s}");
        assert_eq!(s["warehouse"], "s3://bucket/tables");
        cfg.lake.warehouse.clear();
        assert!(catalog_status(&cfg)["warehouse"].is_null());
        cfg.lake.catalog_properties = [
            ("rest.sigv4-enabled", "true"),
            ("rest.signing-name", "s3tables"),
            ("rest.access-key-id", "AKIDEXAMPLE"),
            ("rest.secret-access-key", "hunter2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = catalog_status(&cfg);
        assert_eq!(
            (&s["auth"], &s["signing_name"]),
            (&serde_json::json!("sigv4"), &serde_json::json!("s3tables"))
        );
        assert!(!s.to_string().contains("hunter2"), "{s}");
    }

    #[test]
    fn sql_uris_are_told_apart_and_passwords_hidden() {
        assert_eq!(
            sql_backend("sqlite:/x/c.db?mode=rwc"),
            Some(SqlBackend::Sqlite)
        );
        assert_eq!(
            sql_backend("postgres://u@h:5/db"),
            Some(SqlBackend::Postgres)
        );
        assert_eq!(
            sql_backend("postgresql://u@h/db"),
            Some(SqlBackend::Postgres)
        );
        assert_eq!(sql_backend("mysql://u@h/db"), None);
        let r = redact("postgres://u:hunter2@h:5432/db");
        assert!(
            !r.contains("hunter2") && r.contains("u:***@h:5432/db"),
            "{r}"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    /// The REST client is built without asking the server (it fetches its
    /// config on first use); a server that is not there is an error on the
    /// first call, naming the failure, never a panic.
    #[tokio::test]
    async fn a_rest_catalog_without_a_server_fails_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default().under(dir.path());
        cfg.lake.catalog = CatalogKind::Rest;
        // A port nobody listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        cfg.lake.catalog_uri = format!("http://127.0.0.1:{port}");
        cfg.lake
            .catalog_properties
            .insert("token".into(), "t0ken".into());
        let catalog = open_catalog(&cfg).await.unwrap();
        // The server places the tables: no local warehouse is made for
        // them unless `lake.warehouse` names one.
        assert!(!dir.path().join("warehouse").exists());
        cfg.lake.warehouse = format!("file://{}/named", dir.path().display());
        open_catalog(&cfg).await.unwrap();
        assert!(dir.path().join("named").is_dir());
        cfg.lake.warehouse.clear();
        let e = catalog
            .list_namespaces(None)
            .await
            .expect_err("no server there");
        assert!(!e.to_string().is_empty());
        // No pointer table behind a REST catalog: its commits go to the
        // server (`rest_commit`), its lease to a table of its own.
        assert!(compact::CatalogDb::open(&cfg).await.unwrap().is_none());
    }
}
