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
