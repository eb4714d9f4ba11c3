//! The maintenance metrics: what each table's run did, on the daemon's
//! registry.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::lake::maintain::MaintainReport;

/// The maintenance metrics, on the daemon's registry.
#[derive(Clone)]
pub struct MaintenanceMetrics {
    pub(super) runs: IntCounterVec,
    pub(super) expired: IntCounterVec,
    pub(super) files_deleted: IntCounterVec,
    pub(super) bytes_deleted: IntCounterVec,
    pub(super) compacted: IntCounterVec,
    pub(super) compaction_failures: IntCounterVec,
    pub(super) lease: IntCounterVec,
    pub(super) sweeps: IntCounterVec,
    pub(super) snapshots: IntGaugeVec,
    pub(super) data_files: IntGaugeVec,
    pub(super) metadata_bytes: IntGaugeVec,
    pub(super) duration: HistogramVec,
}

impl MaintenanceMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["table"])?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        Ok(Self {
            runs: counter(
                "ticklake_maintenance_runs_total",
                "Maintenance runs per table, by outcome (ok, failed).",
                &["table", "outcome"],
            )?,
            expired: counter(
                "ticklake_maintenance_snapshots_expired_total",
                "Snapshots expired by maintenance.",
                &["table"],
            )?,
            files_deleted: counter(
                "ticklake_maintenance_files_deleted_total",
                "Files deleted by maintenance, by kind (manifest_list, manifest, data, metadata; orphan: files no snapshot referenced, deleted by the orphan sweep).",
                &["table", "kind"],
            )?,
            bytes_deleted: counter(
                "ticklake_maintenance_bytes_deleted_total",
                "Bytes of the files deleted by maintenance.",
                &["table"],
            )?,
            compacted: counter(
                "ticklake_compaction_files_total",
                "Data files replaced and written by compaction, and dropped with partitions past maintenance.retention_days (retired).",
                &["table", "kind"],
            )?,
            compaction_failures: counter(
                "ticklake_compaction_failures_total",
                "Compactions that failed (the next run tries again).",
                &["table"],
            )?,
            lease: counter(
                "ticklake_maintenance_lease_total",
                "Maintenance runs by what became of the lease: taken (the run went ahead), held_elsewhere (another daemon's; the run did nothing), lost (expired and taken during the run, which stopped), failed (the catalog failed), none (no lease to take).",
                &["outcome"],
            )?,
            sweeps: counter(
                "ticklake_maintenance_orphan_sweeps_total",
                "Orphan-file sweeps per table, by outcome: swept, refused (a referenced file missing from the listing or outside the table's data and metadata directories, or another table's metadata among them; nothing was deleted), failed.",
                &["table", "outcome"],
            )?,
            snapshots: gauge(
                "ticklake_lake_snapshots",
                "Snapshots in the table's metadata after the last maintenance run.",
            )?,
            data_files: gauge(
                "ticklake_lake_data_files",
                "Data files of the table's current snapshot at the last maintenance run.",
            )?,
            metadata_bytes: gauge(
                "ticklake_lake_metadata_bytes",
                "Size of the table's current metadata file, which every reader loads, at the last maintenance run.",
            )?,
            duration: {
                // Runs take from milliseconds (nothing to do) to a minute
                // (a first compaction of a day's small files).
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "ticklake_maintenance_duration_seconds",
                        "Duration of one table's maintenance run (compaction, expiry, file deletion), on the commit runtime.",
                    )
                    .buckets(vec![
                        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    ]),
                    &["table"],
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
        })
    }

    /// The series an alert reads before their first event, at 0: a
    /// refused sweep must be seen the first time it happens.
    pub(super) fn init_tables(&self, tables: impl Iterator<Item = String>) {
        for t in tables {
            for outcome in ["swept", "refused", "failed"] {
                self.sweeps.with_label_values(&[&t, outcome]);
            }
        }
    }

    pub(super) fn record(&self, r: &MaintainReport) {
        let t = r.table.as_str();
        self.runs.with_label_values(&[t, "ok"]).inc();
        self.duration
            .with_label_values(&[t])
            .observe(r.duration_ms as f64 / 1000.0);
        self.expired
            .with_label_values(&[t])
            .inc_by(r.expired as u64);
        self.files_deleted
            .with_label_values(&[t, "manifest_list"])
            .inc_by(r.manifest_lists_deleted as u64);
        self.files_deleted
            .with_label_values(&[t, "metadata"])
            .inc_by(r.metadata_files_deleted as u64);
        self.files_deleted
            .with_label_values(&[t, "manifest"])
            .inc_by(r.manifests_deleted as u64);
        self.files_deleted
            .with_label_values(&[t, "data"])
            .inc_by(r.data_files_deleted as u64);
        if let Some(c) = &r.compaction {
            self.compacted
                .with_label_values(&[t, "replaced"])
                .inc_by(c.files_replaced as u64);
            self.compacted
                .with_label_values(&[t, "written"])
                .inc_by(c.files_written as u64);
        }
        if let Some(x) = &r.retired {
            self.compacted
                .with_label_values(&[t, "retired"])
                .inc_by(x.files as u64);
        }
        if r.compaction_error.is_some() {
            self.compaction_failures.with_label_values(&[t]).inc();
        }
        if let Some(o) = &r.orphans {
            let outcome = if o.refused.is_some() {
                "refused"
            } else {
                "swept"
            };
            self.sweeps.with_label_values(&[t, outcome]).inc();
            self.files_deleted
                .with_label_values(&[t, "orphan"])
                .inc_by(o.deleted as u64);
            self.bytes_deleted
                .with_label_values(&[t])
                .inc_by(o.bytes_deleted);
        }
        if r.orphans_error.is_some() {
            self.sweeps.with_label_values(&[t, "failed"]).inc();
        }
        self.bytes_deleted
            .with_label_values(&[t])
            .inc_by(r.bytes_deleted);
        self.snapshots
            .with_label_values(&[t])
            .set(r.snapshots_after as i64);
        self.data_files
            .with_label_values(&[t])
            .set(r.data_files as i64);
        self.metadata_bytes
            .with_label_values(&[t])
            .set(r.metadata_bytes as i64);
    }
}
