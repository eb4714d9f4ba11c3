//! The CLI side of the query API: `ticklake query` sends its SQL to the
//! running daemon (`POST /v1/sql` on `http.listen`) so the answer includes
//! the uncommitted tail, and prints the answer like a local one. A minimal
//! HTTP/1.0 client on loopback is all it needs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::Value;

use crate::query::session::OutputFormat;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("daemon at {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("daemon at {addr} answered {status}: {error}: {detail}")]
    Api {
        addr: String,
        status: u16,
        error: String,
        detail: String,
    },
    #[error("daemon at {addr} sent a malformed answer: {reason}")]
    Malformed { addr: String, reason: String },
    #[error("formatting: {0}")]
    Format(#[from] arrow::error::ArrowError),
}

/// Runs `sql` on the daemon listening on `listen`. `Ok(None)` means no
/// daemon with the query API answers there (the caller reads the lake).
pub fn sql(listen: &str, sql: &str, timeout: Duration) -> Result<Option<Value>, ClientError> {
    let addr = listen.to_string();
    let io = |source| ClientError::Io {
        addr: addr.clone(),
        source,
    };
    let Ok(sock) = listen.parse::<SocketAddr>() else {
        return Ok(None);
    };
    let mut s = match TcpStream::connect_timeout(&sock, Duration::from_millis(500)) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let body = serde_json::json!({ "sql": sql }).to_string();
    write!(
        s,
        "POST /v1/sql HTTP/1.0\r\nHost: {listen}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let malformed = |reason: &str| ClientError::Malformed {
        addr: addr.clone(),
        reason: reason.to_string(),
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no header end"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("no status"))?;
    // Something else listens there, or a daemon without the query API.
    if status == 404 || status == 405 {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(body).map_err(|e| malformed(&e.to_string()))?;
    if status != 200 {
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        return Err(ClientError::Api {
            addr,
            status,
            error: field("error"),
            detail: field("detail"),
        });
    }
    Ok(Some(v))
}

fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Prints a `/v1/sql` answer in the CLI's formats, columns in query order.
pub fn format(answer: &Value, fmt: OutputFormat) -> Result<String, ClientError> {
    let malformed = |reason: &str| ClientError::Malformed {
        addr: "daemon".into(),
        reason: reason.to_string(),
    };
    let columns: Vec<String> = answer
        .get("columns")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no columns"))?
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let rows = answer
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no rows"))?;
    if fmt == OutputFormat::Json {
        let mut out = String::new();
        for r in rows {
            let fields: Vec<String> = columns
                .iter()
                .map(|c| {
                    format!(
                        "{}:{}",
                        Value::String(c.clone()),
                        r.get(c).cloned().unwrap_or(Value::Null)
                    )
                })
                .collect();
            out.push('{');
            out.push_str(&fields.join(","));
            out.push_str("}\n");
        }
        return Ok(out);
    }
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|c| {
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|r| r.get(c).and_then(cell))
                    .collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema, arrays)?;
    crate::query::session::format(&[batch], fmt).map_err(|e| malformed(&e.to_string()))
}
