//! `ticklake maintain`: one maintenance run (`lake::maintain`) over both
//! tables, by hand, while no daemon runs. A running daemon maintains its
//! own tables every `maintenance.interval_secs`, and holds the data
//! directory's lock, so this refuses then and says so. Daemons elsewhere
//! sharing the catalog are kept out by the maintenance lease
//! (`lake::lease`): this takes it like a daemon's run, and refuses while
//! another holds it.

use crate::config::Config;
use crate::lake::maintain::MaintainReport;
use crate::lake::{self, LakeError};

#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    #[error(
        "{0} (a running daemon maintains its tables itself every maintenance.interval_secs; see `ticklake status`)"
    )]
    Locked(#[from] crate::daemon::lock::LockError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(
        "the maintenance lease is held by {owner} until {expires} (another daemon is maintaining these tables); try again later"
    )]
    Leased { owner: String, expires: String },
    #[error("the maintenance lease: {0}")]
    Lease(String),
    #[error("{table}: {source}")]
    Table {
        table: String,
        source: Box<LakeError>,
    },
}

/// Expires old snapshots of both tables (`maintenance.snapshot_retention`)
/// and deletes the files only they referenced.
pub async fn maintain(cfg: &Config) -> Result<Vec<MaintainReport>, MaintainError> {
    let _lock = crate::daemon::lock::DataDirLock::acquire(&cfg.data_dir_abs())?;
    let catalog = lake::open_catalog(cfg).await?;
    lake::ensure_every_table(catalog.as_ref(), cfg).await?;
    let job = crate::actors::maintenance::Job::from_config(cfg, catalog).await?;
    let run = job.run().await;
    use crate::actors::maintenance::LeaseOutcome;
    match run.lease {
        LeaseOutcome::HeldElsewhere { lease } => {
            return Err(MaintainError::Leased {
                owner: lease.owner,
                expires: chrono::DateTime::from_timestamp_millis(lease.expires_ms)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| lease.expires_ms.to_string()),
            });
        }
        LeaseOutcome::Failed { error } => return Err(MaintainError::Lease(error)),
        LeaseOutcome::Lost { reason, .. } => return Err(MaintainError::Lease(reason)),
        LeaseOutcome::None | LeaseOutcome::Taken { .. } => {}
    }
    run.results
        .into_iter()
        .zip(job.tables())
        .map(|(r, t)| {
            r.map_err(|source| MaintainError::Table {
                table: t.to_string(),
                source: Box::new(source),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::TableKind;
    use crate::lake::compact::CatalogDb;
    use crate::lake::lease::{Acquired, LeaseHandle};

    /// While another daemon holds the lease, `ticklake maintain` does
    /// nothing and names the holder; once released it runs, and gives the
    /// lease back.
    #[tokio::test]
    async fn maintain_refuses_while_another_daemon_holds_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default().under(dir.path());
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        let other = LeaseHandle {
            catalog: catalog.as_ref(),
            store: crate::lake::lease::LeaseStore::Pointer(&db),
            ident: &ident,
            owner: "elsewhere/42/abcdef",
            ttl: std::time::Duration::from_secs(3600),
        };
        assert!(matches!(other.acquire().await.unwrap(), Acquired::Taken(_)));
        let e = maintain(&cfg).await.unwrap_err();
        assert!(matches!(e, MaintainError::Leased { .. }), "{e}");
        assert!(e.to_string().contains("elsewhere/42/abcdef"), "{e}");
        assert!(other.release().await.unwrap());
        let reports = maintain(&cfg).await.unwrap();
        assert!(!reports.is_empty());
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(crate::lake::lease::holder(&table), None);
    }
}
