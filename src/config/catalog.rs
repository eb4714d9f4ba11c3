//! Catalog URIs: which database a SQL catalog URI names, and a URI fit
//! for logs. Here rather than in `lake` because validation needs them and
//! does no IO.

/// The database under a SQL catalog URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlBackend {
    Sqlite,
    Postgres,
}

/// Which database `uri` names, if one the SQL catalog is built with.
pub fn sql_backend(uri: &str) -> Option<SqlBackend> {
    if uri.starts_with("sqlite:") {
        Some(SqlBackend::Sqlite)
    } else if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        Some(SqlBackend::Postgres)
    } else {
        None
    }
}

/// `uri` without its password, for logs and errors.
pub fn redact(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut u) if u.password().is_some() => {
            // Only fails for URLs that cannot carry a password at all.
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => uri.to_string(),
    }
}

/// `lake.catalog_properties` of a REST catalog that asks for AWS
/// Signature Version 4 on every request, as AWS's Iceberg REST endpoints
/// do (Glue's `https://glue.<region>.amazonaws.com/iceberg`, signing name
/// `glue`). The keys are the ones Iceberg's Java and
/// Python clients read, so one set of catalog properties serves every
/// engine.
pub mod sigv4_keys {
    /// `"true"` turns signing on.
    pub const ENABLED: &str = "rest.sigv4-enabled";
    /// The service signed for. Default `execute-api`, as Iceberg's clients.
    pub const SIGNING_NAME: &str = "rest.signing-name";
    /// The region signed for. Default `[lake.s3] region`, else
    /// `AWS_REGION` / `AWS_DEFAULT_REGION`.
    pub const SIGNING_REGION: &str = "rest.signing-region";
    /// Static credentials for the catalog alone. Unset: the `[lake.s3]`
    /// keys and the AWS environment, as the warehouse's client finds them.
    pub const ACCESS_KEY_ID: &str = "rest.access-key-id";
    pub const SECRET_ACCESS_KEY: &str = "rest.secret-access-key";
    pub const SESSION_TOKEN: &str = "rest.session-token";
}

/// What a REST catalog's SigV4 properties ask for.
#[derive(Clone, PartialEq, Eq)]
pub struct SigV4Props {
    pub service: String,
    /// `rest.signing-region`; `None` leaves it to `[lake.s3]` and the
    /// environment.
    pub region: Option<String>,
    /// `rest.access-key-id`, `rest.secret-access-key` and
    /// `rest.session-token`, when set.
    pub keys: Option<(String, String, Option<String>)>,
}

/// The secrets are left out: this is printed in errors.
impl std::fmt::Debug for SigV4Props {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigV4Props")
            .field("service", &self.service)
            .field("region", &self.region)
            .field("access_key_id", &self.keys.as_ref().map(|k| &k.0))
            .finish_non_exhaustive()
    }
}

/// The SigV4 settings in a REST catalog's properties: `Ok(None)` when
/// signing is off, and otherwise the first key that cannot be right, as
/// (key, reason). No IO, no environment.
pub fn sigv4_props(
    props: &std::collections::BTreeMap<String, String>,
) -> Result<Option<SigV4Props>, (String, String)> {
    use sigv4_keys::*;
    let key = |k: &str| format!("lake.catalog_properties.\"{k}\"");
    let nonempty = |k: &str| -> Result<Option<String>, (String, String)> {
        match props.get(k) {
            Some(v) if v.trim().is_empty() => Err((key(k), "must not be empty when set".into())),
            v => Ok(v.cloned()),
        }
    };
    let enabled = match props.get(ENABLED).map(|v| v.trim().to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(v) => {
            return Err((
                key(ENABLED),
                format!("{v:?} is neither \"true\" nor \"false\""),
            ));
        }
    };
    let service = nonempty(SIGNING_NAME)?;
    let region = nonempty(SIGNING_REGION)?;
    let (id, secret, token) = (
        nonempty(ACCESS_KEY_ID)?,
        nonempty(SECRET_ACCESS_KEY)?,
        nonempty(SESSION_TOKEN)?,
    );
    if !enabled {
        if let Some(k) = [
            SIGNING_NAME,
            SIGNING_REGION,
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            SESSION_TOKEN,
        ]
        .into_iter()
        .find(|k| props.contains_key(*k))
        {
            return Err((key(k), format!("has no effect unless {ENABLED} = \"true\"")));
        }
        return Ok(None);
    }
    if ["token", "credential"]
        .iter()
        .any(|k| props.contains_key(*k))
    {
        // A server behind SigV4 authenticates the signature; a bearer
        // token would go in the same Authorization header.
        return Err((
            key(ENABLED),
            "cannot be combined with token or credential: the signature is the \
             Authorization header"
                .into(),
        ));
    }
    let keys = match (id, secret) {
        (Some(id), Some(secret)) => Some((id, secret, token)),
        (None, None) if token.is_none() => None,
        (None, _) => {
            return Err((
                key(ACCESS_KEY_ID),
                format!("is needed with {SECRET_ACCESS_KEY} and {SESSION_TOKEN}"),
            ));
        }
        (Some(_), None) => {
            return Err((
                key(SECRET_ACCESS_KEY),
                format!("is needed with {ACCESS_KEY_ID}"),
            ));
        }
    };
    Ok(Some(SigV4Props {
        service: service.unwrap_or_else(|| "execute-api".into()),
        region,
        keys,
    }))
}
