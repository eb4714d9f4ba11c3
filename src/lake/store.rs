//! Where the lake's files live: a local directory (`file://`), or buckets
//! of an object store (`s3://bucket/prefix`).
//!
//! Local files go through iceberg's own local file IO (`LocalFsStorage`):
//! it is what every earlier build used, and nothing here is faster on a
//! disk.
//!
//! A bucket goes through the `object_store` crate, not through
//! `iceberg-storage-opendal`, so that one client serves both sides of the
//! lake: iceberg's FileIO (commits, manifests, Parquet writes and Iceberg's
//! own reader) through [`ObjectStorage`] here, and DataFusion's Parquet
//! scans (`lake::scan`), which take an `ObjectStore` from their runtime
//! and nothing else. opendal would have meant two clients, two connection
//! pools and two ways of reading credentials for the same bucket.
//!
//! A client is built once per bucket and process, on first use, and
//! shared through a small registry ([`bucket`], [`for_location`]). The
//! warehouse's bucket is one; a REST catalog may place tables in others
//! (S3 Tables gives each table a bucket of its own), which get clients
//! with the same settings.
//!
//! Credentials and endpoint come from the standard AWS environment
//! (`AmazonS3Builder::from_env`), overridden by `[lake.s3]` keys that are
//! set (`config::S3Config`). Table properties such as `s3.endpoint` or
//! vended credentials that a catalog hands to FileIO are ignored: the
//! daemon's own settings decide how it reaches a bucket. (iceberg-rust's
//! REST client drops them anyway on the table a commit returns.)

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
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage,
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
        // The bucket itself is a location too: S3 Tables puts a table at
        // its bucket's root, and the orphan sweep lists it.
        let key = match location.strip_prefix(&self.root).ok_or_else(outside)? {
            "" => "",
            rest => rest.strip_prefix('/').ok_or_else(outside)?,
        };
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

/// `scheme://bucket` of an object-store location (`s3://b/k` -> `s3://b`);
/// `None` for a local one or a scheme no client here serves.
pub fn bucket_root(location: &str) -> Option<String> {
    let (scheme, rest) = location.split_once("://")?;
    if !matches!(scheme, "s3" | "s3a") {
        return None;
    }
    let bucket = rest.split('/').next().filter(|b| !b.is_empty())?;
    Some(format!("{scheme}://{bucket}"))
}

/// The client of the bucket `root` (`s3://bucket`) with the settings `s3`,
/// built on first use and then shared: every catalog, query session and
/// maintenance run of the process goes through the same connection pool.
pub fn bucket(root: &str, s3: &S3Config) -> Result<Arc<ObjectWarehouse>, StoreError> {
    // A poisoned lock only means another thread panicked while holding it;
    // the list itself is always whole.
    let mut known = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, w)) = known.iter().find(|(r, c, _)| r == root && c == s3) {
        return Ok(w.clone());
    }
    let store = build_s3(root, s3).map_err(|source| StoreError::Build {
        url: root.to_string(),
        source,
    })?;
    let w = Arc::new(ObjectWarehouse::new(root, store));
    known.push((root.to_string(), s3.clone(), w.clone()));
    Ok(w)
}

/// The client of the configured warehouse, or `None` for a local one.
pub fn object_warehouse(cfg: &Config) -> Result<Option<Arc<ObjectWarehouse>>, StoreError> {
    let url = cfg.warehouse();
    let WarehouseUrl::Object {
        scheme, bucket: b, ..
    } = WarehouseUrl::parse(&url)?
    else {
        return Ok(None);
    };
    bucket(&format!("{scheme}://{b}"), &cfg.lake.s3).map(Some)
}

/// The client whose bucket holds `location`, if one was built in this
/// process (the newest, when the settings changed). A table's files are
/// reached through the catalog's FileIO first (its metadata is read when
/// it is loaded), which builds the client of the table's bucket; listings
/// and DataFusion's scans that come after find it here.
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

/// The storage factory for iceberg's FileIO: [`ObjectStorage`], which
/// reaches a file in whichever bucket it is, and local files through
/// iceberg's own local file IO. Not the warehouse's store alone: a REST
/// catalog places the tables itself (S3 Tables puts each in a bucket it
/// names, `s3://…--table-s3`, whatever `lake.warehouse` says), and
/// iceberg's local file IO given an `s3://` location writes it as a path
/// relative to the working directory.
pub fn storage_factory(cfg: &Config) -> Result<Arc<dyn StorageFactory>, StoreError> {
    // The warehouse's client is built now, so that a setting it cannot be
    // built with fails the catalog's opening, not its first write; the
    // storage finds it in the registry by the same bucket and settings.
    object_warehouse(cfg)?;
    Ok(Arc::new(ObjectStorageFactory::new(cfg.lake.s3.clone())))
}

/// Builds [`ObjectStorage`] over the shared clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStorageFactory {
    /// The settings every bucket's client is built with. Not serialized
    /// (they hold secrets); a deserialized factory finds clients already
    /// built in the registry.
    #[serde(skip)]
    s3: Option<S3Config>,
}

impl ObjectStorageFactory {
    pub fn new(s3: S3Config) -> Self {
        Self { s3: Some(s3) }
    }
}

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage {
            s3: self.s3.clone(),
            local: LocalFsStorage,
        }))
    }
}

/// iceberg's `Storage` over `object_store` clients, one per bucket, and
/// iceberg's own local file IO for `file://` locations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStorage {
    #[serde(skip)]
    s3: Option<S3Config>,
    local: LocalFsStorage,
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

/// Where a location's file is: on the local disk, or in a bucket.
enum Target {
    Local,
    Object(Arc<ObjectWarehouse>, Path),
}

impl ObjectStorage {
    /// The client of the bucket `root` with the warehouse's settings (the
    /// warehouse's own client for its bucket), built once a process.
    fn bucket(&self, root: &str) -> Result<Arc<ObjectWarehouse>, StoreError> {
        match &self.s3 {
            Some(s3) => bucket(root, s3),
            None => for_location(root).ok_or_else(|| StoreError::NoClient {
                location: root.to_string(),
            }),
        }
    }

    fn target(&self, location: &str) -> iceberg::Result<Target> {
        if local_path(location).is_some() {
            return Ok(Target::Local);
        }
        let root = bucket_root(location).ok_or_else(|| {
            ice(StoreError::Url(WarehouseUrlError {
                url: location.to_string(),
                reason: "not a location this daemon reads (file:// or s3://bucket/…)".into(),
            }))
        })?;
        let w = self.bucket(&root).map_err(ice)?;
        let p = w.path(location).map_err(ice)?;
        Ok(Target::Object(w, p))
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let Target::Object(w, p) = self.target(path)? else {
            return self.local.exists(path).await;
        };
        match w.store.head(&p).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_err(path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let Target::Object(w, p) = self.target(path)? else {
            return self.local.metadata(path).await;
        };
        let meta = w.store.head(&p).await.map_err(|e| io_err(path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let Target::Object(w, p) = self.target(path)? else {
            return self.local.read(path).await;
        };
        let got = w.store.get(&p).await.map_err(|e| io_err(path, e))?;
        got.bytes().await.map_err(|e| io_err(path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let Target::Object(w, p) = self.target(path)? else {
            return self.local.reader(path).await;
        };
        Ok(Box::new(ObjectRead {
            store: w.store(),
            path: p,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let Target::Object(w, p) = self.target(path)? else {
            return self.local.write(path, bs).await;
        };
        w.store
            .put(&p, bs.into())
            .await
            .map_err(|e| io_err(path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let Target::Object(w, p) = self.target(path)? else {
            return self.local.writer(path).await;
        };
        Ok(Box::new(ObjectWrite {
            inner: BufWriter::new(w.store(), p),
            location: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let Target::Object(w, p) = self.target(path)? else {
            return self.local.delete(path).await;
        };
        match w.store.delete(&p).await {
            // Gone already is what was asked for.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let Target::Object(w, p) = self.target(path.trim_end_matches('/'))? else {
            return self.local.delete_prefix(path).await;
        };
        // `list` matches whole segments: `a/b` lists `a/b/..`, not `a/bc`.
        let listed = w.store.list(Some(&p)).map_ok(|m| m.location).boxed();
        w.store
            .delete_stream(listed)
            .try_for_each(|_| futures::future::ready(Ok(())))
            .await
            .map_err(|e| io_err(path, e))
    }

    /// The paths go to the store that holds each: one bulk delete per
    /// bucket (a table's files may span buckets only in a table moved
    /// between them, but nothing says they cannot), local files one by one.
    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        let mut local = Vec::new();
        let mut by_bucket: Vec<(Arc<ObjectWarehouse>, Vec<Path>)> = Vec::new();
        let mut paths = paths;
        while let Some(loc) = paths.next().await {
            match self.target(&loc)? {
                Target::Local => local.push(loc),
                Target::Object(w, p) => {
                    match by_bucket.iter_mut().find(|(b, _)| b.root == w.root) {
                        Some((_, keys)) => keys.push(p),
                        None => by_bucket.push((w, vec![p])),
                    }
                }
            }
        }
        if !local.is_empty() {
            self.local
                .delete_stream(futures::stream::iter(local).boxed())
                .await?;
        }
        for (w, keys) in by_bucket {
            let keys = futures::stream::iter(keys.into_iter().map(Ok)).boxed();
            let mut deleted = w.store.delete_stream(keys);
            while let Some(r) = deleted.next().await {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(io_err(w.root(), e)),
                }
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
        // The bucket itself: a table at its bucket's root (S3 Tables).
        assert_eq!(w.path("s3://bucket").unwrap().as_ref(), "");
        assert_eq!(w.path("s3://bucket/").unwrap().as_ref(), "");
        assert!(matches!(
            w.path("s3://bucketx"),
            Err(StoreError::Outside { .. })
        ));
    }

    #[test]
    fn a_location_names_its_bucket() {
        for (location, root) in [
            ("s3://b/t/data/x.parquet", Some("s3://b")),
            ("s3a://b-1--table-s3", Some("s3a://b-1--table-s3")),
            ("s3://b-1--table-s3/", Some("s3://b-1--table-s3")),
            ("s3:///k", None),
            ("gs://b/k", None),
            ("file:///tmp/w/t", None),
            ("/tmp/w/t", None),
        ] {
            assert_eq!(bucket_root(location).as_deref(), root, "{location}");
        }
    }
}
