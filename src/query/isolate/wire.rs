//! The frames between the daemon and a SQL worker, over the worker's
//! stdin and stdout: a 4-byte little-endian length, a 1-byte kind, and
//! the payload. JSON for the small messages, Arrow IPC for tail rows.
//!
//! The daemon reads the worker's frames with a limit on their length (an
//! answer is never longer than the query memory), so a worker gone wrong
//! cannot make the daemon allocate what it asks for.

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::messages::query::QueryError;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Daemon → worker, first: the daemon's config as JSON.
    Config = 1,
    /// Daemon → worker: the statement ([`QueryFrame`]).
    Query = 2,
    /// Worker → daemon: a scan of `market.trades_live` needs a pin; the
    /// payload is the tail filter as JSON.
    Scan = 3,
    /// Daemon → worker: the pin ([`PinnedHead`] then Arrow IPC rows).
    Pinned = 4,
    /// Worker → daemon: the answer's JSON text.
    Answer = 5,
    /// Worker → daemon: the query failed ([`ErrorFrame`]).
    Error = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Kind::Config,
            2 => Kind::Query,
            3 => Kind::Scan,
            4 => Kind::Pinned,
            5 => Kind::Answer,
            6 => Kind::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("pipe: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is over the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame payload: {0}")]
    Json(#[from] serde_json::Error),
    #[error("tail rows: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("malformed pinned frame")]
    Pinned,
    #[error("the other side closed the pipe")]
    Closed,
}

/// The statement a worker runs.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueryFrame {
    pub sql: String,
}

/// The head of a `Pinned` frame: the lake snapshot the tail rows follow.
#[derive(Debug, Serialize, Deserialize)]
pub struct PinnedHead {
    pub snapshot_id: Option<i64>,
}

/// A failed query, as the API names it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: String,
    pub detail: String,
    /// For a timeout: the limit that was passed.
    #[serde(default)]
    pub timeout_ms: u64,
}

impl ErrorFrame {
    pub fn of(e: &QueryError) -> Self {
        Self {
            code: e.code().to_string(),
            detail: e.to_string(),
            timeout_ms: match e {
                QueryError::Timeout(ms) => *ms,
                _ => 0,
            },
        }
    }

    /// The error back as the daemon's own. A code the daemon does not know
    /// (a worker of another version) is internal.
    pub fn into_error(self) -> QueryError {
        match self.code.as_str() {
            "rejected_query" => QueryError::Rejected(self.detail),
            "invalid_query" => QueryError::InvalidQuery(self.detail),
            "not_found" => QueryError::NotFound(self.detail),
            "timeout" => QueryError::Timeout(self.timeout_ms),
            "memory_limit" => QueryError::OverMemory(self.detail),
            "unavailable" => QueryError::Unavailable(self.detail),
            _ => QueryError::Internal(self.detail),
        }
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> Result<(), WireError> {
    write_parts(w, kind, &[payload]).await
}

/// One frame whose payload is `parts`, one after the other (an answer is
/// written in parts and sent without joining them).
pub async fn write_parts<W: AsyncWrite + Unpin, P: AsRef<[u8]>>(
    w: &mut W,
    kind: Kind,
    parts: &[P],
) -> Result<(), WireError> {
    let total: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    let len = u32::try_from(total).map_err(|_| WireError::TooLong {
        len: total,
        limit: u32::MAX as usize,
    })?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(&[kind as u8]).await?;
    for p in parts {
        w.write_all(p.as_ref()).await?;
    }
    w.flush().await?;
    Ok(())
}

pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    kind: Kind,
    value: &T,
) -> Result<(), WireError> {
    write_frame(w, kind, &serde_json::to_vec(value)?).await
}

/// The next frame, `None` at a clean end of the pipe. A payload longer
/// than `limit` is refused before it is read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<(Kind, Vec<u8>)>, WireError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = Kind::from_u8(head[4]).ok_or(WireError::Kind(head[4]))?;
    if len > limit {
        return Err(WireError::TooLong { len, limit });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

/// A `Pinned` payload: the head's length, the head, the rows as one Arrow
/// IPC stream (none when there are no rows).
pub fn encode_pinned(head: &PinnedHead, rows: &[RecordBatch]) -> Result<Vec<u8>, WireError> {
    let head = serde_json::to_vec(head)?;
    let mut out = Vec::with_capacity(4 + head.len());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    if let Some(first) = rows.first() {
        let mut w = StreamWriter::try_new(&mut out, first.schema_ref())?;
        for b in rows {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}

pub fn decode_pinned(payload: &[u8]) -> Result<(PinnedHead, Vec<RecordBatch>), WireError> {
    let len_bytes: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(WireError::Pinned)?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let head = payload.get(4..4 + len).ok_or(WireError::Pinned)?;
    let head: PinnedHead = serde_json::from_slice(head)?;
    let rest = &payload[4 + len..];
    if rest.is_empty() {
        return Ok((head, Vec::new()));
    }
    let rows = StreamReader::try_new(Cursor::new(rest), None)?.collect::<Result<Vec<_>, _>>()?;
    Ok((head, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[tokio::test]
    async fn frames_round_trip_and_a_long_one_is_refused_unread() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Answer, b"{\"x\":1}")
            .await
            .unwrap();
        write_json(
            &mut buf,
            Kind::Query,
            &QueryFrame {
                sql: "select 1".into(),
            },
        )
        .await
        .unwrap();
        let mut r = Cursor::new(buf.clone());
        let (k, p) = read_frame(&mut r, 1024).await.unwrap().unwrap();
        assert_eq!((k, p.as_slice()), (Kind::Answer, &b"{\"x\":1}"[..]));
        let (k, p) = read_frame(&mut r, 1024).await.unwrap().unwrap();
        assert_eq!(k, Kind::Query);
        let q: QueryFrame = serde_json::from_slice(&p).unwrap();
        assert_eq!(q.sql, "select 1");
        assert!(read_frame(&mut r, 1024).await.unwrap().is_none());
        let mut r = Cursor::new(buf);
        assert!(matches!(
            read_frame(&mut r, 3).await,
            Err(WireError::TooLong { len: 7, limit: 3 })
        ));
        let mut bad = Cursor::new(vec![0, 0, 0, 0, 99]);
        assert!(matches!(
            read_frame(&mut bad, 10).await,
            Err(WireError::Kind(99))
        ));
    }

    #[test]
    fn pinned_rows_round_trip_through_ipc() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("symbol", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("BTCUSDT"), None])),
            ],
        )
        .unwrap();
        let p = encode_pinned(
            &PinnedHead {
                snapshot_id: Some(7),
            },
            &[b.clone(), b.clone()],
        )
        .unwrap();
        let (head, rows) = decode_pinned(&p).unwrap();
        assert_eq!(head.snapshot_id, Some(7));
        assert_eq!(rows, vec![b.clone(), b]);
        let p = encode_pinned(&PinnedHead { snapshot_id: None }, &[]).unwrap();
        let (head, rows) = decode_pinned(&p).unwrap();
        assert_eq!((head.snapshot_id, rows.len()), (None, 0));
        assert!(decode_pinned(&[1, 0]).is_err());
        assert!(decode_pinned(&[200, 0, 0, 0, b'{']).is_err());
    }

    #[test]
    fn errors_cross_with_their_code() {
        for e in [
            QueryError::Rejected("r".into()),
            QueryError::InvalidQuery("i".into()),
            QueryError::Timeout(1500),
            QueryError::OverMemory("m".into()),
            QueryError::Internal("x".into()),
        ] {
            let back = ErrorFrame::of(&e).into_error();
            assert_eq!(back.code(), e.code());
            assert_eq!(back.to_string(), e.to_string());
        }
    }
}
