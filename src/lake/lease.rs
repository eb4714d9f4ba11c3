//! The maintenance lease: at most one daemon of a group maintains the
//! lake at a time.
//!
//! Several daemons may write one table (one consumer group, partitions
//! spread). Each runs a maintenance actor, and two compactions or expiries
//! of one table at once would do the work twice and delete each other's
//! fresh files. So a run first takes a lease, held in the catalog itself:
//! the table property [`LEASE_PROPERTY`] = `"<owner>;<expires unix ms>"` on
//! the `trades` table. It needs nothing but the catalog every daemon
//! already shares, and no group membership of any kind.
//!
//! Taking it must be atomic, and a table property alone is not: Iceberg's
//! property update carries no requirement, so two `Transaction`s setting
//! it both succeed (the later one re-applies itself on the new base). The
//! lease is therefore committed like a compaction (`compact::CatalogDb`):
//! a metadata file with the property changed is written next to the
//! current one, and the catalog's pointer is swapped from the metadata
//! this daemon *read* to it, by compare-and-set. If anything committed in
//! between (another daemon's lease, a writer's append) the swap fails,
//! and the decision is made again on the new metadata: exactly one of
//! several daemons racing for a free lease gets it.
//!
//! A lease expires after `maintenance.lease_ttl`: a daemon that died
//! holding it blocks maintenance for that long at most. The holder renews
//! it between tables and releases it at the end. Expiry compares unix
//! times of different machines, so the TTL must dwarf their clock skew
//! (minutes against milliseconds under NTP).
//!
//! Appends never wait on it and never fail because of it: a writer whose
//! commit loses the swap to a lease commit retries on top of it, like
//! after any other commit, and the property is carried along.
//!
//! A REST catalog has no pointer table: it commits only through its
//! server, and Iceberg's commit requirements cannot say "this property
//! still has the value I read" (a property update carries none, and
//! `assert-ref-snapshot-id` on an unmoved `main` lets two updates both
//! pass). There the lease is a property of a table of its own,
//! `<namespace>.ticklake_lease` ([`LEASE_TABLE`]), and every change to it
//! is committed together with an empty append, on exactly the state read
//! (`commit::commit_pinned`): the append makes the commit require `main`
//! at the snapshot read and moves it to a new snapshot, whose id is fresh
//! each time, so of two changes based on one state only the first lands,
//! and no later state can look like an earlier one. A table of its own,
//! not the trades table, so that lease commits and the writers' appends
//! never refuse each other. The holder expires its old snapshots at the
//! end of each run ([`LeaseHandle::tidy`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use iceberg::spec::TableMetadataBuilder;
use iceberg::table::Table;
use iceberg::{Catalog, MetadataLocation, TableIdent};
use serde::Serialize;

use super::LakeError;
use super::compact::CatalogDb;

/// The table property holding the lease.
pub const LEASE_PROPERTY: &str = "ticklake.maintenance.lease";

/// The table holding the lease where there is no pointer table to swap
/// (a REST catalog), in the lake's namespace.
pub const LEASE_TABLE: &str = "ticklake_lease";

/// Swaps lost in a row before a lease operation gives up: every loss is
/// another commit landing, and writers commit every few seconds at most.
const MAX_ATTEMPTS: usize = 16;

/// A lease as recorded in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Who holds it: host, process id and daemon id (see [`owner_id`]).
    pub owner: String,
    /// Unix milliseconds after which anyone may take it.
    pub expires_ms: i64,
}

impl Lease {
    /// Parses the property value; `None` when it is not one (a foreign
    /// value is treated as no lease, and overwritten by the next taker).
    pub fn parse(value: &str) -> Option<Self> {
        let (owner, expires) = value.rsplit_once(';')?;
        let expires_ms = expires.parse().ok()?;
        (!owner.is_empty()).then(|| Self {
            owner: owner.to_string(),
            expires_ms,
        })
    }

    fn value(&self) -> String {
        format!("{};{}", self.owner, self.expires_ms)
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_ms
    }
}

/// The lease recorded in `table`, expired or not.
pub fn holder(table: &Table) -> Option<Lease> {
    table
        .metadata()
        .properties()
        .get(LEASE_PROPERTY)
        .and_then(|v| Lease::parse(v))
}

/// This process's owner id, `host/pid/daemon id`. The daemon id is
/// derived from the host and the data directory (which one process at a
/// time holds, `daemon::lock`), so a daemon restarted on the same data
/// directory is the same owner: it takes back a lease its previous life
/// left held (killed mid-run) instead of waiting out the TTL. The pid
/// only tells the operator which process it was.
pub fn owner_id(data_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    // `;` separates the owner from the expiry, `/` the owner's parts.
    let host = host.replace([';', '/'], "_");
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{host}\0{}", data_dir.display()).as_bytes(),
    )
    .simple()
    .to_string();
    format!("{host}/{}/{}", std::process::id(), &id[..12])
}

/// Whether two owner ids name the same daemon: host and daemon id equal,
/// whatever the pid (see [`owner_id`]); other spellings compare whole.
pub fn same_owner(a: &str, b: &str) -> bool {
    fn key(o: &str) -> Option<(&str, &str)> {
        let (host, rest) = o.split_once('/')?;
        let (_pid, id) = rest.rsplit_once('/')?;
        Some((host, id))
    }
    match (key(a), key(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What an attempt to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Acquired {
    /// Ours now (taken, or renewed if it was already ours).
    Taken(Lease),
    /// Another owner's, not expired.
    HeldBy(Lease),
}

/// How the lease's table is committed to.
#[derive(Clone, Copy)]
pub enum LeaseStore<'a> {
    /// A SQL catalog: a metadata file with the property changed, and a
    /// compare-and-set of the catalog's pointer.
    Pointer(&'a CatalogDb),
    /// Any catalog: the property changed with an empty append, committed
    /// on exactly the state read; the table ([`LEASE_TABLE`]) is made on
    /// first use.
    Table,
}

/// One table's lease, operated by one owner.
pub struct LeaseHandle<'a> {
    pub catalog: &'a dyn Catalog,
    pub store: LeaseStore<'a>,
    pub ident: &'a TableIdent,
    pub owner: &'a str,
    pub ttl: Duration,
}

/// The lease table of the lake whose namespace is `ns`.
pub fn lease_table(ns: &iceberg::NamespaceIdent) -> TableIdent {
    TableIdent::new(ns.clone(), LEASE_TABLE.to_string())
}

impl LeaseHandle<'_> {
    /// The lease's table as it is now; with [`LeaseStore::Table`], made
    /// if it is not there yet (by whichever daemon comes first). One
    /// request when it is there, as it is after the first run.
    async fn load(&self) -> Result<Table, LakeError> {
        match self.catalog.load_table(self.ident).await {
            Ok(table) => return Ok(table),
            Err(e)
                if matches!(self.store, LeaseStore::Table)
                    && e.kind() == iceberg::ErrorKind::TableNotFound => {}
            Err(e) => return Err(e.into()),
        }
        let schema = iceberg::spec::Schema::builder()
            .with_fields(vec![std::sync::Arc::new(
                iceberg::spec::NestedField::optional(
                    1,
                    "note",
                    iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::String),
                ),
            )])
            .build()?;
        let spec = iceberg::spec::UnboundPartitionSpec::builder().build();
        // Another daemon making it at the same moment is fine: the
        // table is there either way.
        if let Err(e) = super::ensure(self.catalog, self.ident, schema, spec).await
            && !self.catalog.table_exists(self.ident).await?
        {
            return Err(e);
        }
        Ok(self.catalog.load_table(self.ident).await?)
    }

    /// Takes the lease if it is free, expired or already ours (then it is
    /// renewed); otherwise says who holds it.
    pub async fn acquire(&self) -> Result<Acquired, LakeError> {
        for _ in 0..MAX_ATTEMPTS {
            let table = self.load().await?;
            let now = now_ms();
            if let Some(l) = holder(&table)
                && !same_owner(&l.owner, self.owner)
                && !l.expired(now)
            {
                return Ok(Acquired::HeldBy(l));
            }
            let mine = self.lease_from(now);
            if self.commit(&table, Some(&mine)).await? {
                return Ok(Acquired::Taken(mine));
            }
        }
        Err(self.gave_up("taking"))
    }

    /// Extends our lease by the TTL from now. `Ok(false)`: it is not ours
    /// any more (it expired and another owner took it): stop working.
    pub async fn renew(&self) -> Result<bool, LakeError> {
        for _ in 0..MAX_ATTEMPTS {
            let table = self.load().await?;
            if holder(&table).is_none_or(|l| !same_owner(&l.owner, self.owner)) {
                return Ok(false);
            }
            if self
                .commit(&table, Some(&self.lease_from(now_ms())))
                .await?
            {
                return Ok(true);
            }
        }
        Err(self.gave_up("renewing"))
    }

    /// Gives the lease up if it is ours; `Ok(false)` if it was not.
    pub async fn release(&self) -> Result<bool, LakeError> {
        for _ in 0..MAX_ATTEMPTS {
            let table = self.load().await?;
            if holder(&table).is_none_or(|l| !same_owner(&l.owner, self.owner)) {
                return Ok(false);
            }
            if self.commit(&table, None).await? {
                return Ok(true);
            }
        }
        Err(self.gave_up("releasing"))
    }

    fn lease_from(&self, now: i64) -> Lease {
        Lease {
            owner: self.owner.to_string(),
            expires_ms: now.saturating_add(self.ttl.as_millis().min(i64::MAX as u128) as i64),
        }
    }

    fn gave_up(&self, what: &str) -> LakeError {
        LakeError::Catalog(format!(
            "{}: {what} the maintenance lease lost {MAX_ATTEMPTS} swaps in a row to other commits",
            self.ident
        ))
    }

    /// Expires the lease table's snapshots but the current one: one is
    /// added by every change of the lease. For the holder, before it
    /// releases. Nothing to do with a pointer store.
    pub async fn tidy(&self) -> Result<(), LakeError> {
        if matches!(self.store, LeaseStore::Table) {
            super::maintain::expire(
                self.catalog,
                self.ident,
                Duration::ZERO,
                super::maintain::METADATA_GRACE,
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Sets the lease to `lease` (or removes it) if `table` is still the
    /// table's current state. `false`: something committed since `table`
    /// was loaded, and nothing changed.
    async fn commit(&self, table: &Table, lease: Option<&Lease>) -> Result<bool, LakeError> {
        match self.store {
            LeaseStore::Pointer(db) => self.swap(db, table, lease).await,
            LeaseStore::Table => {
                use iceberg::transaction::{ApplyTransactionAction, Transaction};
                let tx = Transaction::new(table);
                // The snapshot says what it did (an append must add files
                // or say something): who took the lease until when, or
                // that it was released.
                let said = lease.map_or_else(|| "released".to_string(), Lease::value);
                let tx = tx
                    .fast_append()
                    .with_check_duplicate(false)
                    .add_data_files(Vec::new())
                    .set_snapshot_properties(HashMap::from([(LEASE_PROPERTY.to_string(), said)]))
                    .apply(tx)?;
                let update = tx.update_table_properties();
                let update = match lease {
                    Some(l) => update.set(LEASE_PROPERTY.to_string(), l.value()),
                    None => update.remove(LEASE_PROPERTY.to_string()),
                };
                let tx = update.apply(tx)?;
                match super::commit::commit_pinned(self.catalog, table, tx).await {
                    Ok(_) => Ok(true),
                    Err(e) if super::commit::is_conflict(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Writes `table`'s metadata with the lease set to `lease` (or
    /// removed) as its next version, and swaps the catalog's pointer to it
    /// if the pointer is still `table`'s. `false`: something committed
    /// since `table` was loaded; the written file is deleted.
    async fn swap(
        &self,
        db: &CatalogDb,
        table: &Table,
        lease: Option<&Lease>,
    ) -> Result<bool, LakeError> {
        let current = table
            .metadata_location()
            .ok_or_else(|| LakeError::Catalog(format!("{} has no metadata file", self.ident)))?;
        let builder = TableMetadataBuilder::new_from_metadata(
            table.metadata().clone(),
            Some(current.to_string()),
        );
        let builder = match lease {
            Some(l) => {
                builder.set_properties(HashMap::from([(LEASE_PROPERTY.to_string(), l.value())]))?
            }
            None => builder.remove_properties(&[LEASE_PROPERTY.to_string()])?,
        };
        let next = builder.build()?.metadata;
        let location = MetadataLocation::from_str(current)?.with_next_version();
        next.write_to(table.file_io(), &location).await?;
        let location = location.to_string();
        if db.swap(self.ident, current, &location).await? {
            return Ok(true);
        }
        // Nothing points at it; a failed delete leaves a file the expiry
        // removes later (not in any metadata log, past the grace).
        let _ = table.file_io().delete(&location).await;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::test_lake;

    #[test]
    fn the_property_round_trips_and_foreign_values_are_no_lease() {
        let l = Lease {
            owner: "host/12/abc".into(),
            expires_ms: 1_700_000_000_000,
        };
        assert_eq!(Lease::parse(&l.value()), Some(l.clone()));
        assert!(l.expired(1_700_000_000_000));
        assert!(!l.expired(1_699_999_999_999));
        for bad in ["", "owner", "owner;", ";123", "owner;soon"] {
            assert_eq!(Lease::parse(bad), None, "{bad:?}");
        }
        let a = std::path::Path::new("/srv/a/data");
        let id = owner_id(a);
        assert!(!id.contains(';'));
        assert_eq!(id, owner_id(a));
        assert!(!same_owner(
            &id,
            &owner_id(std::path::Path::new("/srv/b/data"))
        ));
        // The same daemon restarted: another pid, the same owner.
        let (host, rest) = id.split_once('/').unwrap();
        let (_, daemon) = rest.split_once('/').unwrap();
        assert!(same_owner(&id, &format!("{host}/1/{daemon}")));
        assert!(!same_owner(&id, &format!("other/1/{daemon}")));
        assert!(same_owner("a", "a") && !same_owner("a", "b"));
    }

    fn handle<'a>(
        catalog: &'a dyn Catalog,
        store: LeaseStore<'a>,
        ident: &'a TableIdent,
        owner: &'a str,
        ttl: Duration,
    ) -> LeaseHandle<'a> {
        LeaseHandle {
            catalog,
            store,
            ident,
            owner,
            ttl,
        }
    }

    /// Eight owners race for a free lease: exactly one takes it, the
    /// others see it held by that one. In the pointer table, and in a
    /// lease table of its own (made by whichever comes first).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_owners_racing_for_a_free_lease_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, _) = test_lake(dir.path()).await;
        let db = std::sync::Arc::new(CatalogDb::open(&cfg).await.unwrap().unwrap());
        let own = lease_table(ident.namespace());
        for (name, ident) in [("pointer", ident.clone()), ("table", own)] {
            let mut tasks = Vec::new();
            for i in 0..8 {
                let (catalog, db, ident) = (catalog.clone(), db.clone(), ident.clone());
                tasks.push(tokio::spawn(async move {
                    let owner = format!("owner-{i}");
                    let store = match name {
                        "pointer" => LeaseStore::Pointer(&db),
                        _ => LeaseStore::Table,
                    };
                    let h = handle(
                        catalog.as_ref(),
                        store,
                        &ident,
                        &owner,
                        Duration::from_secs(60),
                    );
                    (owner.clone(), h.acquire().await.unwrap())
                }));
            }
            let mut winners = Vec::new();
            let mut seen = Vec::new();
            for t in tasks {
                let (owner, r) = t.await.unwrap();
                match r {
                    Acquired::Taken(l) => winners.push((owner, l)),
                    Acquired::HeldBy(l) => seen.push(l.owner),
                }
            }
            assert_eq!(winners.len(), 1, "{name}: winners: {winners:?}");
            let (winner, lease) = &winners[0];
            assert!(
                seen.iter().all(|o| o == winner),
                "{name}: {seen:?} vs {winner}"
            );
            let table = catalog.load_table(&ident).await.unwrap();
            assert_eq!(holder(&table).as_ref(), Some(lease), "{name}");
        }
    }

    /// An expired lease is taken; ours renews; a lost one is noticed on
    /// renewal; release frees it and only its owner can release.
    #[tokio::test]
    async fn an_expired_lease_is_taken_and_the_old_owner_notices() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, catalog, _, ident, _) = test_lake(dir.path()).await;
        let db = CatalogDb::open(&cfg).await.unwrap().unwrap();
        let own = lease_table(ident.namespace());
        for (store, ident) in [
            (LeaseStore::Pointer(&db), &ident),
            (LeaseStore::Table, &own),
        ] {
            expiry_renewal_and_release(catalog.as_ref(), store, ident).await;
        }
    }

    async fn expiry_renewal_and_release(
        c: &dyn Catalog,
        store: LeaseStore<'_>,
        ident: &TableIdent,
    ) {
        let short = handle(c, store, ident, "a", Duration::from_millis(1));
        assert!(matches!(short.acquire().await.unwrap(), Acquired::Taken(_)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = handle(c, store, ident, "b", Duration::from_secs(60));
        let Acquired::Taken(lb) = b.acquire().await.unwrap() else {
            panic!("an expired lease must be free");
        };
        assert!(!short.renew().await.unwrap(), "a's lease is b's now");
        assert!(!short.release().await.unwrap(), "only its owner releases");
        let a = handle(c, store, ident, "a", Duration::from_secs(60));
        assert_eq!(a.acquire().await.unwrap(), Acquired::HeldBy(lb.clone()));
        assert!(b.renew().await.unwrap());
        let renewed = holder(&c.load_table(ident).await.unwrap()).unwrap();
        assert!(renewed.expires_ms >= lb.expires_ms);
        b.tidy().await.unwrap();
        assert!(b.release().await.unwrap());
        assert_eq!(holder(&c.load_table(ident).await.unwrap()), None);
        assert!(matches!(a.acquire().await.unwrap(), Acquired::Taken(_)));
    }

    /// In a lease table of its own, every change is a snapshot with a
    /// fresh id, and the holder's tidying keeps only the current one:
    /// the table does not grow with the runs.
    #[tokio::test]
    async fn the_lease_table_keeps_one_snapshot_after_tidying() {
        let dir = tempfile::tempdir().unwrap();
        let (_, catalog, _, ident, _) = test_lake(dir.path()).await;
        let own = lease_table(ident.namespace());
        let h = handle(
            catalog.as_ref(),
            LeaseStore::Table,
            &own,
            "a",
            Duration::from_secs(60),
        );
        let mut ids = std::collections::HashSet::new();
        for _ in 0..5 {
            assert!(matches!(h.acquire().await.unwrap(), Acquired::Taken(_)));
            assert!(h.renew().await.unwrap());
            let t = catalog.load_table(&own).await.unwrap();
            ids.insert(t.metadata().current_snapshot_id().unwrap());
            assert!(h.release().await.unwrap());
        }
        let t = catalog.load_table(&own).await.unwrap();
        assert_eq!(ids.len(), 5, "every change a fresh snapshot");
        assert_eq!(t.metadata().snapshots().count(), 15);
        h.tidy().await.unwrap();
        let t = catalog.load_table(&own).await.unwrap();
        assert_eq!(t.metadata().snapshots().count(), 1);
        assert_eq!(holder(&t), None);
        // The data tables are untouched by it.
        let trades = catalog.load_table(&ident).await.unwrap();
        assert_eq!(holder(&trades), None);
    }
}
