//! The embedded registry: a JSON file in the data directory, with the
//! semantics of a Confluent Schema Registry, so the daemon can serve it over
//! Confluent's REST API:
//!
//! - an id stands for one schema text, whatever the subject: the same
//!   schema registered under two subjects gets one id (a Confluent
//!   consumer resolves ids alone, `/schemas/ids/{id}`);
//! - a subject holds versions 1, 2, ... in registration order, each naming
//!   an id;
//! - a schema new to a subject must be BACKWARD compatible with the
//!   subject's latest version (Confluent's default level).
//!
//! Schemas are kept as written (compact JSON), with their logical types and
//! defaults: a consumer decodes decimals and timestamps from the text it is
//! served, and reads added fields through their defaults. Files an older
//! build wrote hold Avro's Parsing Canonical Form, which drops both; such
//! an entry is rewritten as written the first time its schema is
//! registered or looked up again (the two forms encode alike, so the id
//! keeps meaning the same bytes).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RegistryError, SchemaRegistry};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Store {
    next_id: u32,
    /// id -> the schema, and the subject it was first registered under.
    schemas: BTreeMap<u32, Entry>,
    /// subject -> the ids of its versions, version n at index n - 1. Files
    /// from before subjects had versions lack it; `load` rebuilds it.
    #[serde(default)]
    subjects: BTreeMap<String, Vec<u32>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    subject: String,
    schema: String,
    /// The schema is kept as written. False on entries an older build
    /// wrote, in canonical form: only those are matched by it.
    #[serde(default)]
    as_written: bool,
}

impl Store {
    /// Every entry's first subject lists it: true of files this build
    /// wrote, and how a file from before `subjects` existed gets its
    /// versions (in id order, the order they were registered in).
    fn fill_subjects(&mut self) {
        for (id, e) in &self.schemas {
            let versions = self.subjects.entry(e.subject.clone()).or_default();
            if !versions.contains(id) {
                versions.push(*id);
            }
        }
    }

    fn versions(&self, subject: &str) -> Result<&Vec<u32>, RegistryError> {
        self.subjects
            .get(subject)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RegistryError::SubjectNotFound {
                subject: subject.to_string(),
            })
    }

    /// The id of `schema` (as `Written`), whatever its subject. A legacy
    /// entry holding its canonical form is rewritten to it.
    fn find(&mut self, w: &Written) -> Option<u32> {
        if let Some((id, _)) = self.schemas.iter().find(|(_, e)| e.schema == w.text) {
            return Some(*id);
        }
        let (id, e) = self
            .schemas
            .iter_mut()
            .find(|(_, e)| !e.as_written && e.schema == w.canonical)?;
        e.schema = w.text.clone();
        e.as_written = true;
        Some(*id)
    }

    /// The entry of an id a subject names. The path of a `Corrupt` error
    /// is filled in by `LocalRegistry::read` and `with_store`.
    fn entry(&self, id: u32) -> Result<&Entry, RegistryError> {
        self.schemas.get(&id).ok_or_else(|| RegistryError::Corrupt {
            path: PathBuf::new(),
            reason: format!("a subject names id {id}, which has no schema"),
        })
    }
}

/// A schema as kept: compact JSON of the text as written, and its Parsing
/// Canonical Form (to match entries older builds wrote).
struct Written {
    text: String,
    canonical: String,
    parsed: apache_avro::Schema,
}

impl Written {
    fn new(subject: &str, schema: &str) -> Result<Self, RegistryError> {
        let bad = |reason: String| RegistryError::BadSchema {
            subject: subject.to_string(),
            reason,
        };
        let parsed = apache_avro::Schema::parse_str(schema).map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(schema).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            text: json.to_string(),
            canonical: parsed.canonical_form(),
            parsed,
        })
    }
}

/// Which version of a subject a request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Latest,
    Number(u32),
}

impl Version {
    /// Confluent's forms: `latest`, `-1` (latest), or a version from 1.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "latest" | "-1" => Some(Version::Latest),
            n => n.parse().ok().filter(|n| *n >= 1).map(Version::Number),
        }
    }
}

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

/// File-backed registry. Several processes (the daemon, `ticklake produce`)
/// may share a data directory, so every read-modify-write holds an exclusive
/// lock on a sibling lock file.
pub struct LocalRegistry {
    path: PathBuf,
    lock_path: PathBuf,
}

impl LocalRegistry {
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(data_dir).map_err(|source| RegistryError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: data_dir.join("schemas.json"),
            lock_path: data_dir.join("schemas.lock"),
        })
    }

    /// The registry file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> Result<File, RegistryError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| self.io(e))?;
        f.lock().map_err(|e| self.io(e))?;
        Ok(f)
    }

    fn load(&self) -> Result<Store, RegistryError> {
        let mut store = match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RegistryError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store {
                next_id: 1,
                ..Store::default()
            },
            Err(e) => return Err(self.io(e)),
        };
        store.fill_subjects();
        Ok(store)
    }

    fn save(&self, store: &Store) -> Result<(), RegistryError> {
        // write-then-rename so a crash never leaves a half-written registry
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(store).map_err(|e| RegistryError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&body).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))
    }

    /// Runs `f` on the store under the lock, saving it when `f` changed it
    /// (a registration, or a legacy entry rewritten).
    fn with_store<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let _guard = self.lock()?;
        let mut store = self.load()?;
        let before = serde_json::to_vec(&store).ok();
        let out = f(&mut store).map_err(|e| self.with_path(e))?;
        if serde_json::to_vec(&store).ok() != before {
            self.save(&store)?;
        }
        Ok(out)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let _guard = self.lock()?;
        f(&self.load()?).map_err(|e| self.with_path(e))
    }

    fn with_path(&self, e: RegistryError) -> RegistryError {
        match e {
            RegistryError::Corrupt { path, reason } if path.as_os_str().is_empty() => {
                RegistryError::Corrupt {
                    path: self.path.clone(),
                    reason,
                }
            }
            e => e,
        }
    }

    /// Every subject with at least one version, sorted.
    pub fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        self.read(|s| {
            Ok(s.subjects
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, _)| k.clone())
                .collect())
        })
    }

    /// The version numbers of `subject`: 1 to its latest.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        self.read(|s| Ok((1..=s.versions(subject)?.len() as u32).collect()))
    }

    pub fn subject_version(
        &self,
        subject: &str,
        version: Version,
    ) -> Result<SubjectVersion, RegistryError> {
        self.read(|s| subject_version(s, subject, version))
    }

    /// The version under which `subject` holds `schema`.
    pub fn lookup_version(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<SubjectVersion, RegistryError> {
        let w = Written::new(subject, schema)?;
        self.with_store(|s| {
            let id = s.find(&w);
            let versions = s.versions(subject)?;
            match id.and_then(|id| versions.iter().position(|v| *v == id)) {
                Some(i) => subject_version(s, subject, Version::Number(i as u32 + 1)),
                None => Err(RegistryError::SchemaNotFound {
                    what: format!("under subject {subject}"),
                }),
            }
        })
    }

    /// Whether `schema` can read what `version` of `subject` wrote
    /// (BACKWARD): `Ok(Err(reason))` when it cannot.
    pub fn check_compatible(
        &self,
        subject: &str,
        version: Version,
        schema: &str,
    ) -> Result<Result<(), String>, RegistryError> {
        let w = Written::new(subject, schema)?;
        let old = self.subject_version(subject, version)?;
        Ok(can_read(&old.schema, &w.parsed))
    }

    /// The subjects and versions that name `id`.
    pub fn usages(&self, id: u32) -> Result<Vec<(String, u32)>, RegistryError> {
        self.read(|s| {
            if !s.schemas.contains_key(&id) {
                return Err(RegistryError::SchemaNotFound {
                    what: format!("id {id}"),
                });
            }
            Ok(s.subjects
                .iter()
                .flat_map(|(subject, ids)| {
                    ids.iter()
                        .enumerate()
                        .filter(|(_, i)| **i == id)
                        .map(|(n, _)| (subject.clone(), n as u32 + 1))
                })
                .collect())
        })
    }
}

fn subject_version(
    s: &Store,
    subject: &str,
    version: Version,
) -> Result<SubjectVersion, RegistryError> {
    let versions = s.versions(subject)?;
    let n = match version {
        Version::Latest => versions.len() as u32,
        Version::Number(n) => n,
    };
    let id = *versions.get((n as usize).wrapping_sub(1)).ok_or_else(|| {
        RegistryError::VersionNotFound {
            subject: subject.to_string(),
            version: n.to_string(),
        }
    })?;
    Ok(SubjectVersion {
        subject: subject.to_string(),
        version: n,
        id,
        schema: s.entry(id)?.schema.clone(),
    })
}

/// Whether a reader on `new` reads everything `old` wrote. `old` as
/// stored: a legacy canonical form lacks defaults, which only a reader
/// needs. apache-avro calls a reader that reads only some of the writer's
/// records (a union narrowed to one of its branches) partially compatible;
/// BACKWARD, as Confluent checks it, needs every record read.
fn can_read(old: &str, new: &apache_avro::Schema) -> Result<(), String> {
    use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
    let old = apache_avro::Schema::parse_str(old).map_err(|e| e.to_string())?;
    match SchemaCompatibility::can_read(&old, new) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err(
            "the new schema reads only some of the records the old one wrote (a union narrowed)"
                .into(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

impl SchemaRegistry for LocalRegistry {
    fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let w = Written::new(subject, schema)?;
        self.with_store(|store| {
            let existing = store.find(&w);
            let versions = store.subjects.get(subject).cloned().unwrap_or_default();
            if let Some(id) = existing.filter(|id| versions.contains(id)) {
                return Ok(id);
            }
            if let Some(latest) = versions.last() {
                can_read(&store.entry(*latest)?.schema, &w.parsed).map_err(|reason| {
                    RegistryError::Incompatible {
                        subject: subject.to_string(),
                        latest: *latest,
                        reason,
                    }
                })?;
            }
            let id = match existing {
                Some(id) => id,
                None => {
                    let id = store.next_id.max(1);
                    store.next_id = id + 1;
                    store.schemas.insert(
                        id,
                        Entry {
                            subject: subject.to_string(),
                            schema: w.text.clone(),
                            as_written: true,
                        },
                    );
                    id
                }
            };
            store
                .subjects
                .entry(subject.to_string())
                .or_default()
                .push(id);
            Ok(id)
        })
    }

    fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        match self.lookup_version(subject, schema) {
            Ok(v) => Ok(Some(v.id)),
            Err(RegistryError::SubjectNotFound { .. } | RegistryError::SchemaNotFound { .. }) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn schema(&self, id: u32) -> Result<Option<String>, RegistryError> {
        self.read(|s| Ok(s.schemas.get(&id).map(|e| e.schema.clone())))
    }
}
