//! `lake.warehouse`, parsed, and `[lake.s3]`: the client of an
//! `s3://bucket/prefix` warehouse
//! (`crate::lake::store`). Every key is optional: an unset key leaves the
//! value to the standard AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...), and a key that is set wins
//! over it. With neither, the client looks for instance or container
//! credentials, as the AWS SDKs do.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[lake.s3]`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`).
    /// Unset: `AWS_ENDPOINT_URL`, else AWS's own for the region.
    pub endpoint: Option<String>,
    /// Region of the bucket. Unset: `AWS_REGION` / `AWS_DEFAULT_REGION`,
    /// else `us-east-1`.
    pub region: Option<String>,
    /// Access key id. Unset: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret access key. Unset: `AWS_SECRET_ACCESS_KEY`. Never logged nor
    /// shown.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials. Unset: `AWS_SESSION_TOKEN`.
    /// Never logged nor shown.
    pub session_token: Option<String>,
    /// Allow a plain `http://` endpoint (a test server, a private MinIO).
    /// Unset: `AWS_ALLOW_HTTP`, else false.
    pub allow_http: Option<bool>,
    /// Address the bucket in the path (`http://host/bucket/key`) rather
    /// than in the host name (`http://bucket.host/key`); most servers other
    /// than AWS want this. Unset: `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, else
    /// path style.
    pub path_style: Option<bool>,
}

/// The secrets are left out: a config is printed in errors and logs.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<hidden>");
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("path_style", &self.path_style)
            .finish()
    }
}

impl S3Config {
    /// The first value that cannot be right, as (key, reason). No IO: a
    /// server that does not answer is seen at start.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(e) = &self.endpoint
            && let Err(why) = url::Url::parse(e)
        {
            return Err(("lake.s3.endpoint", format!("{e:?} is not a URL: {why}")));
        }
        for (key, v) in [
            ("lake.s3.region", &self.region),
            ("lake.s3.access_key_id", &self.access_key_id),
        ] {
            if v.as_ref().is_some_and(|v| v.trim().is_empty()) {
                return Err((key, "must not be empty when set".into()));
            }
        }
        Ok(())
    }
}

/// A `lake.warehouse` that names no place ticklake can keep a lake.
#[derive(Debug, thiserror::Error)]
#[error("{url:?} is not a warehouse location: {reason}")]
pub struct WarehouseUrlError {
    pub url: String,
    pub reason: String,
}

/// `lake.warehouse`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarehouseUrl {
    /// `file:///dir` or a plain path.
    Local(PathBuf),
    /// `s3://bucket/prefix` (or `s3a://`).
    Object {
        scheme: String,
        bucket: String,
        prefix: String,
    },
}

impl WarehouseUrl {
    pub fn parse(url: &str) -> Result<Self, WarehouseUrlError> {
        let bad = |reason: &str| WarehouseUrlError {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        match url.split_once("://") {
            None if url.trim().is_empty() => Err(bad("empty")),
            None => Ok(WarehouseUrl::Local(PathBuf::from(url))),
            Some(("file", "")) => Err(bad("no path after file://")),
            Some(("file", path)) => Ok(WarehouseUrl::Local(PathBuf::from(path))),
            Some((scheme @ ("s3" | "s3a"), rest)) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("no bucket"));
                }
                let prefix = prefix.trim_matches('/');
                if prefix
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
                    && !prefix.is_empty()
                {
                    return Err(bad("the prefix has an empty, `.` or `..` segment"));
                }
                Ok(WarehouseUrl::Object {
                    scheme: scheme.to_string(),
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                })
            }
            Some((scheme, _)) => Err(bad(&format!(
                "scheme {scheme}:// is not supported (file:// or s3://)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secrets() {
        let c = S3Config {
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI".into()),
            session_token: Some("FwoGZXIvYXdzE".into()),
            ..S3Config::default()
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("FwoGZXIvYXdzE"), "{shown}");
    }

    #[test]
    fn a_bad_warehouse_or_endpoint_names_its_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad-lake.toml");
        for (body, key, value) in [
            (
                "[lake]\nwarehouse = \"gs://b/x\"\n",
                "lake.warehouse",
                "gs://",
            ),
            (
                "[lake.s3]\nendpoint = \"127.0.0.1 9000\"\n",
                "lake.s3.endpoint",
                "127.0.0.1 9000",
            ),
        ] {
            std::fs::write(&f, body).unwrap();
            let e = super::super::Config::load(Some(&f))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(key) && e.contains("bad-lake.toml") && e.contains(value),
                "{e}"
            );
        }
    }

    #[test]
    fn a_bad_endpoint_names_its_key() {
        let c = S3Config {
            endpoint: Some("not a url".into()),
            ..S3Config::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "lake.s3.endpoint");
        assert!(S3Config::default().validate().is_ok());
    }

    #[test]
    fn warehouse_urls() {
        assert_eq!(
            WarehouseUrl::parse("file:///data/wh").unwrap(),
            WarehouseUrl::Local("/data/wh".into())
        );
        assert_eq!(
            WarehouseUrl::parse("/data/wh").unwrap(),
            WarehouseUrl::Local("/data/wh".into())
        );
        assert_eq!(
            WarehouseUrl::parse("s3://b/lake/prod/").unwrap(),
            WarehouseUrl::Object {
                scheme: "s3".into(),
                bucket: "b".into(),
                prefix: "lake/prod".into()
            }
        );
        assert_eq!(
            WarehouseUrl::parse("s3://b").unwrap(),
            WarehouseUrl::Object {
                scheme: "s3".into(),
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        let gs = WarehouseUrl::parse("gs://b/x").unwrap_err().to_string();
        assert!(gs.contains("gs:// is not supported"), "{gs}");
        assert!(WarehouseUrl::parse("s3:///x").is_err());
        assert!(WarehouseUrl::parse("s3://b/a//c").is_err());
        assert!(WarehouseUrl::parse("s3://b/a/../c").is_err());
        assert!(WarehouseUrl::parse("").is_err());
    }
}
