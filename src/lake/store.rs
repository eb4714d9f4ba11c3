//! Where the lake's files live: a local directory (`file://`), or a bucket
//! of an object store (`s3://bucket/prefix`).
//!
//! A local warehouse keeps iceberg's own `LocalFsStorageFactory`: it is
//! what every earlier build used, and nothing here is faster on a disk.
//!
//! An object-store warehouse goes through the `object_store` crate, not
//! through `iceberg-storage-opendal`, so that one client serves both sides
//! of the lake: iceberg's FileIO (commits, manifests, Parquet writes and
//! Iceberg's own reader) through [`ObjectStorage`] here, and DataFusion's
//! Parquet scans (`lake::scan`), which take an `ObjectStore` registered in
//! their runtime and nothing else. opendal would have meant two clients,
//! two connection pools and two ways of reading credentials for the same
//! bucket. The client is built once per warehouse and process and shared
//! through a small registry ([`object_warehouse`], [`for_location`]).
//!
//! Credentials and endpoint come from the standard AWS environment
//! (`AmazonS3Builder::from_env`), overridden by `[lake.s3]` keys that are
//! set (`config::S3Config`). Table properties such as `s3.endpoint` that a
//! catalog hands to FileIO are ignored: the daemon's own settings decide
//! where its warehouse is.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorageFactory, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use object_store::aws::{AmazonS3Builder, AwsCredentialProvider};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::config::{Config, S3Config};
pub use crate::config::{WarehouseUrl, WarehouseUrlError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Url(#[from] WarehouseUrlError),
    #[error("{location}: no object store client for it in this process")]
    NoClient { location: String },
    #[error("object store client for {url}: {source}")]
    Build {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{location} is not in the warehouse's bucket {root}")]
    Outside { location: String, root: String },
    #[error("{location}: {source}")]
    Io {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{location}: {source}")]
    Local {
        location: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the same call may succeed later: only an object store that
    /// failed to answer, not a location or a setting that is wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            _ => false,
        }
    }
}

/// The client of one bucket, and the URL (`s3://bucket`) its locations
/// start with.
pub struct ObjectWarehouse {
    root: String,
    store: Arc<dyn ObjectStore>,
}

/// Only the bucket: a client's own `Debug` can carry its credentials.
impl fmt::Debug for ObjectWarehouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectWarehouse")
            .field("root", &self.root)
            .field("store", &self.store.to_string())
            .finish()
    }
}

impl ObjectWarehouse {
    /// A warehouse over an already built client; `root` is `scheme://bucket`.
    pub fn new(root: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            root: root.into().trim_end_matches('/').to_string(),
            store,
        }
    }

    /// `scheme://bucket`: the URL under which DataFusion finds the client.
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The key of `location` (`s3://bucket/a/b` -> `a/b`).
    pub fn path(&self, location: &str) -> Result<Path, StoreError> {
        let outside = || StoreError::Outside {
            location: location.to_string(),
            root: self.root.clone(),
        };
        let key = location
            .strip_prefix(&self.root)
            .and_then(|k| k.strip_prefix('/'))
            .ok_or_else(outside)?;
        Path::parse(key).map_err(|e| StoreError::Io {
            location: location.to_string(),
            source: e.into(),
        })
    }

    /// The location of `path`, as iceberg writes it.
    pub fn location(&self, path: &Path) -> String {
        format!("{}/{}", self.root, path)
    }
}

type Registry = Mutex<Vec<(String, S3Config, Arc<ObjectWarehouse>)>>;

/// The clients built so far in this process, one per bucket and settings.
fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Vec::new()))
}

/// The client of the configured warehouse, or `None` for a local one.
/// Built on first use and then shared: every catalog, query session and
/// maintenance run of the process goes through the same connection pool.
pub fn object_warehouse(cfg: &Config) -> Result<Option<Arc<ObjectWarehouse>>, StoreError> {
    let url = cfg.warehouse();
    let WarehouseUrl::Object { scheme, bucket, .. } = WarehouseUrl::parse(&url)? else {
        return Ok(None);
    };
    let root = format!("{scheme}://{bucket}");
    let s3 = &cfg.lake.s3;
    // A poisoned lock only means another thread panicked while holding it;
    // the list itself is always whole.
    let mut known = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, w)) = known.iter().find(|(r, c, _)| *r == root && c == s3) {
        return Ok(Some(w.clone()));
    }
    let store = build_s3(&root, s3).map_err(|source| StoreError::Build {
        url: url.clone(),
        source,
    })?;
    let w = Arc::new(ObjectWarehouse::new(root.clone(), store));
    known.push((root, s3.clone(), w.clone()));
    Ok(Some(w))
}

/// The client whose bucket holds `location`, if one was built in this
/// process (the newest, when the settings changed).
pub fn for_location(location: &str) -> Option<Arc<ObjectWarehouse>> {
    let known = registry().lock().unwrap_or_else(|p| p.into_inner());
    known
        .iter()
        .rev()
        .find(|(root, _, _)| {
            location
                .strip_prefix(root.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .map(|(_, _, w)| w.clone())
}

fn build_s3(root: &str, s3: &S3Config) -> object_store::Result<Arc<dyn ObjectStore>> {
    Ok(Arc::new(s3_builder(s3).with_url(root).build()?))
}

/// The AWS environment (`AWS_*`), overridden by the `[lake.s3]` keys that
/// are set.
fn s3_builder(s3: &S3Config) -> AmazonS3Builder {
    let mut b = AmazonS3Builder::from_env();
    if let Some(v) = &s3.endpoint {
        b = b.with_endpoint(v);
    }
    if let Some(v) = &s3.region {
        b = b.with_region(v);
    }
    if let Some(v) = &s3.access_key_id {
        b = b.with_access_key_id(v);
    }
    if let Some(v) = &s3.secret_access_key {
        b = b.with_secret_access_key(v);
    }
    if let Some(v) = &s3.session_token {
        b = b.with_token(v);
    }
    if let Some(v) = s3.allow_http {
        b = b.with_allow_http(v);
    }
    if let Some(v) = s3.path_style {
        b = b.with_virtual_hosted_style_request(!v);
    }
    b
}

/// AWS credentials and the region, found as the warehouse's S3 client
/// finds them (`[lake.s3]`, else the environment: keys, web identity,
/// container or instance credentials, refreshed before they expire), or
/// `keys` when given. For signing what is not S3 (a REST catalog on AWS),
/// with the one credential chain the daemon already has rather than a
/// second one. `None` for the region when neither names one.
pub fn aws_credentials(
    s3: &S3Config,
    keys: Option<(&str, &str, Option<&str>)>,
) -> object_store::Result<(AwsCredentialProvider, Option<String>)> {
    use object_store::StaticCredentialProvider;
    use object_store::aws::{AmazonS3ConfigKey, AwsCredential};
    let b = s3_builder(s3);
    let region = b.get_config_value(&AmazonS3ConfigKey::Region);
    if let Some((id, secret, token)) = keys {
        let credential = AwsCredential {
            key_id: id.to_string(),
            secret_key: secret.to_string(),
            token: token.map(str::to_string),
        };
        return Ok((Arc::new(StaticCredentialProvider::new(credential)), region));
    }
    // The builder builds an S3 client, which needs a bucket; only its
    // credential provider is kept, and nothing is asked of any bucket.
    let s3 = b.with_bucket_name("ticklake-credentials").build()?;
    Ok((s3.credentials().clone(), region))
}

/// The storage factory of the configured warehouse for iceberg's FileIO.
pub fn storage_factory(cfg: &Config) -> Result<Arc<dyn StorageFactory>, StoreError> {
    Ok(match object_warehouse(cfg)? {
        None => Arc::new(LocalFsStorageFactory),
        Some(w) => Arc::new(ObjectStorageFactory::new(w)),
    })
}

/// Builds [`ObjectStorage`] over one shared client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStorageFactory {
    root: String,
    /// Not serialized (a client does not serialize); a deserialized factory
    /// finds the client of its bucket in the registry.
    #[serde(skip)]
    warehouse: Option<Arc<ObjectWarehouse>>,
}

impl ObjectStorageFactory {
    pub fn new(warehouse: Arc<ObjectWarehouse>) -> Self {
        Self {
            root: warehouse.root().to_string(),
            warehouse: Some(warehouse),
        }
    }
}

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage {
            root: self.root.clone(),
            warehouse: self.warehouse.clone(),
        }))
    }
}

/// iceberg's `Storage` over an `object_store` client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStorage {
    root: String,
    #[serde(skip)]
    warehouse: Option<Arc<ObjectWarehouse>>,
}

fn ice(e: StoreError) -> iceberg::Error {
    let kind = match &e {
        StoreError::Outside { .. } | StoreError::Url(_) | StoreError::NoClient { .. } => {
            iceberg::ErrorKind::DataInvalid
        }
        _ => iceberg::ErrorKind::Unexpected,
    };
    let mut err = iceberg::Error::new(kind, e.to_string());
    if e.is_retryable() {
        err = err.with_retryable(true);
    }
    err.with_source(e)
}

fn io_err(location: &str, source: object_store::Error) -> iceberg::Error {
    ice(StoreError::Io {
        location: location.to_string(),
        source,
    })
}

impl ObjectStorage {
    fn warehouse(&self) -> iceberg::Result<Arc<ObjectWarehouse>> {
        self.warehouse
            .clone()
            .or_else(|| for_location(&self.root))
            .ok_or_else(|| {
                iceberg::Error::new(
                    iceberg::ErrorKind::Unexpected,
                    format!("no object store client for {} in this process", self.root),
                )
            })
    }

    fn resolve(&self, location: &str) -> iceberg::Result<(Arc<ObjectWarehouse>, Path)> {
        let w = self.warehouse()?;
        let p = w.path(location).map_err(ice)?;
        Ok((w, p))
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let (w, p) = self.resolve(path)?;
        match w.store.head(&p).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_err(path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let (w, p) = self.resolve(path)?;
        let meta = w.store.head(&p).await.map_err(|e| io_err(path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let (w, p) = self.resolve(path)?;
        let got = w.store.get(&p).await.map_err(|e| io_err(path, e))?;
        got.bytes().await.map_err(|e| io_err(path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let (w, p) = self.resolve(path)?;
        Ok(Box::new(ObjectRead {
            store: w.store(),
            path: p,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let (w, p) = self.resolve(path)?;
        w.store
            .put(&p, bs.into())
            .await
            .map_err(|e| io_err(path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let (w, p) = self.resolve(path)?;
        Ok(Box::new(ObjectWrite {
            inner: BufWriter::new(w.store(), p),
            location: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let (w, p) = self.resolve(path)?;
        match w.store.delete(&p).await {
            // Gone already is what was asked for.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let (w, p) = self.resolve(path.trim_end_matches('/'))?;
        // `list` matches whole segments: `a/b` lists `a/b/..`, not `a/bc`.
        let listed = w.store.list(Some(&p)).map_ok(|m| m.location).boxed();
        w.store
            .delete_stream(listed)
            .try_for_each(|_| futures::future::ready(Ok(())))
            .await
            .map_err(|e| io_err(path, e))
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        let w = self.warehouse()?;
        let resolver = w.clone();
        let keys = paths
            .map(move |loc| {
                resolver
                    .path(&loc)
                    .map_err(|e| object_store::Error::Generic {
                        store: "ticklake",
                        source: Box::new(e),
                    })
            })
            .boxed();
        let mut deleted = w.store.delete_stream(keys);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_err(&self.root, e)),
            }
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Range reads of one object: the Parquet reader asks for the footer, then
/// for the column chunks it needs.
struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.path, range)
            .await
            .map_err(|e| io_err(&self.location, e))
    }
}

/// A streaming write: one PUT when the file stays under the buffer's
/// capacity (manifests, most data files), a multipart upload past it. The
/// object appears whole at `close` or not at all.
struct ObjectWrite {
    inner: BufWriter,
    location: String,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.inner
            .put(bs)
            .await
            .map_err(|e| io_err(&self.location, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        self.inner.shutdown().await.map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("{}: completing the upload: {e}", self.location),
            )
            .with_retryable(true)
            .with_source(e)
        })
    }
}

/// A file of a directory listing (`list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// As iceberg names it: `file:///dir/f` or `s3://bucket/dir/f`.
    pub location: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// The files under the directory `location`, on whichever store holds it:
/// a local directory's own files (not its subdirectories'), every object
/// under an object-store prefix. A directory that does not exist lists
/// nothing.
pub async fn list(location: &str) -> Result<Vec<Listed>, StoreError> {
    list_under(location, 1).await
}

/// Every file under the directory `location`, at any depth (a table's
/// partition directories): what [`list`] gives on an object store, where
/// a prefix holds every object below it. A local directory that cannot be
/// read fails the listing, since a caller deciding what is absent must not
/// take an unreadable directory for an empty one; one that does not exist
/// lists nothing.
pub async fn list_tree(location: &str) -> Result<Vec<Listed>, StoreError> {
    list_under(location, usize::MAX).await
}

async fn list_under(location: &str, depth: usize) -> Result<Vec<Listed>, StoreError> {
    if let Some(dir) = local_path(location) {
        if depth == 1 {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Ok(Vec::new());
            };
            return Ok(entries
                .filter_map(Result::ok)
                .filter_map(|e| listed(&e.path(), &e.metadata().ok()?))
                .collect());
        }
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(&dir).max_depth(depth) {
            let e = e.map_err(|e| StoreError::Local {
                location: location.to_string(),
                source: e.into(),
            })?;
            let meta = e.metadata().map_err(|e| StoreError::Local {
                location: location.to_string(),
                source: e.into(),
            })?;
            out.extend(listed(e.path(), &meta));
        }
        return Ok(out);
    }
    let w = for_location(location).ok_or_else(|| StoreError::NoClient {
        location: location.to_string(),
    })?;
    let prefix = w.path(location.trim_end_matches('/'))?;
    let metas: Vec<_> = w
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| StoreError::Io {
            location: location.to_string(),
            source,
        })?;
    Ok(metas
        .into_iter()
        .map(|m| Listed {
            location: w.location(&m.location),
            size: m.size,
            modified: Some(m.last_modified.into()),
        })
        .collect())
}

/// A local file as listed; `None` for a directory.
fn listed(path: &std::path::Path, meta: &std::fs::Metadata) -> Option<Listed> {
    meta.is_file().then(|| Listed {
        location: format!("file://{}", path.display()),
        size: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// The size of the file at `location`, `None` when it cannot be read.
pub async fn size(location: &str) -> Option<u64> {
    if let Some(p) = local_path(location) {
        return std::fs::metadata(p).ok().map(|m| m.len());
    }
    let w = for_location(location)?;
    let p = w.path(location).ok()?;
    w.store.head(&p).await.ok().map(|m| m.size)
}

/// A `file://` location (or a plain path) as a local path; `None` for an
/// object-store location.
pub fn local_path(location: &str) -> Option<PathBuf> {
    match location.split_once("://") {
        Some(("file", rest)) => Some(PathBuf::from(rest)),
        Some(_) => None,
        None => Some(PathBuf::from(location)),
    }
}

/// The same file's location written the same way: iceberg may name a
/// local file `file:///a` in one place and `/a` in another.
pub fn normalized(location: &str) -> String {
    match local_path(location) {
        Some(p) => p.display().to_string(),
        None => location.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_map_to_keys_of_their_bucket_only() {
        let w = ObjectWarehouse::new(
            "s3://bucket",
            Arc::new(object_store::memory::InMemory::new()),
        );
        assert_eq!(
            w.path("s3://bucket/p/market/trades/data/ts_day=2024-01-01/a.parquet")
                .unwrap()
                .as_ref(),
            "p/market/trades/data/ts_day=2024-01-01/a.parquet"
        );
        assert!(matches!(
            w.path("s3://bucket2/p/a"),
            Err(StoreError::Outside { .. })
        ));
        assert!(matches!(
            w.path("s3://other/p/a"),
            Err(StoreError::Outside { .. })
        ));
        assert_eq!(w.location(&Path::from("p/a")), "s3://bucket/p/a");
    }
}
