//! The worker's side: `ticklake sql-worker`, started by the daemon with
//! its stdin and stdout as the pipe (`wire`), never by hand.
//!
//! It reads the daemon's config, caps its own address space at
//! `api.sql_worker_memory_bytes`, opens the catalog and builds the query
//! engine (an idle worker gets this far and waits), then reads statements
//! one at a time, runs each as `POST /v1/sql` would in the daemon and
//! writes its answer or error, until the daemon closes the pipe. Everything runs on the query runtime,
//! whose stacks the SQL guard's limits are sized for.

use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result as DFResult};
use tokio::io::{AsyncWrite, BufReader, Stdin, Stdout};
use tokio::sync::Mutex;

use super::wire::{self, ErrorFrame, Kind, QueryFrame, WireError};
use crate::config::Config;
use crate::messages::query::{QueryError, QueryRequest};
use crate::messages::tail::TailFilter;
use crate::query::hybrid::RemotePin;

/// Longest config frame read (the daemon's config as JSON).
const CONFIG_LIMIT: usize = 16 << 20;

/// Longest statement frame read: well past the guard's own limit, which
/// then refuses it with its message.
const QUERY_LIMIT: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the daemon sent {0:?} where the worker expected {1:?}")]
    Unexpected(Option<Kind>, Kind),
    #[error("config from the daemon: {0}")]
    Config(#[from] serde_json::Error),
    #[error("capping the address space at {bytes} bytes: {source}")]
    Limit { bytes: u64, source: std::io::Error },
    #[error("the query runtime: {0}")]
    Runtime(String),
}

/// Stdin and stdout, taken together: a scan's request and its answer
/// must not interleave with another's.
struct Pipe {
    r: BufReader<Stdin>,
    w: Stdout,
}

/// Runs one worker to its end. Errors before the statement ran are the
/// caller's to print; the daemon sees the pipe close.
pub fn main() -> Result<(), WorkerError> {
    die_with_parent();
    let handle = crate::query::pool::handle();
    handle
        .block_on(handle.spawn(serve()))
        .map_err(|e| WorkerError::Runtime(e.to_string()))?
}

async fn serve() -> Result<(), WorkerError> {
    let pipe = Arc::new(Mutex::new(Pipe {
        r: BufReader::new(tokio::io::stdin()),
        w: tokio::io::stdout(),
    }));
    let cfg: Config = {
        let mut p = pipe.lock().await;
        let payload = expect(&mut p, Kind::Config, CONFIG_LIMIT).await?;
        serde_json::from_slice(&payload)?
    };
    cap_address_space(cfg.api.sql_worker_memory_bytes)?;
    let remote = Arc::new(DaemonPin(pipe.clone()));
    let engine = match crate::query::session::engine_pinned_by(&cfg, remote).await {
        Ok(e) => Arc::new(e),
        Err(e) => {
            let err =
                QueryError::Unavailable(format!("the SQL worker could not open the lake: {e}"));
            let mut p = pipe.lock().await;
            return reply_error(&mut p.w, &err).await;
        }
    };
    // One statement after another until the daemon closes the pipe (it
    // keeps idle workers for the next statements) or stops this one.
    loop {
        let query: QueryFrame = {
            let mut p = pipe.lock().await;
            match wire::read_frame(&mut p.r, QUERY_LIMIT).await? {
                None => return Ok(()),
                Some((Kind::Query, payload)) => serde_json::from_slice(&payload)?,
                Some((k, _)) => return Err(WorkerError::Unexpected(Some(k), Kind::Query)),
            }
        };
        let engine = engine.clone();
        // A panic fails the statement with a 500, as in the daemon.
        let answer = tokio::spawn(async move { engine.run(QueryRequest::Sql(query.sql)).await })
            .await
            .unwrap_or_else(|e| Err(QueryError::Internal(format!("the query failed: {e}"))));
        let mut p = pipe.lock().await;
        match answer {
            Ok(a) => {
                let (parts, _memory) = a.into_parts();
                wire::write_parts(&mut p.w, Kind::Answer, &parts).await?;
            }
            Err(e) => reply_error(&mut p.w, &e).await?,
        }
    }
}

async fn expect(p: &mut Pipe, kind: Kind, limit: usize) -> Result<Vec<u8>, WorkerError> {
    match wire::read_frame(&mut p.r, limit).await? {
        Some((k, payload)) if k == kind => Ok(payload),
        other => Err(WorkerError::Unexpected(other.map(|(k, _)| k), kind)),
    }
}

async fn reply_error<W: AsyncWrite + Unpin>(w: &mut W, e: &QueryError) -> Result<(), WorkerError> {
    wire::write_json(w, Kind::Error, &ErrorFrame::of(e)).await?;
    Ok(())
}

/// A daemon killed outright (SIGKILL, the OOM killer) cannot stop its
/// workers; the kernel does it for it, so none runs on without a daemon to
/// answer. (An idle worker would also see its pipe close.)
fn die_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_PDEATHSIG reads one integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

/// Past this, an allocation fails and the worker aborts: the daemon then
/// answers 507 and carries on. Lowering a limit needs no privilege.
fn cap_address_space(bytes: u64) -> Result<(), WorkerError> {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    if rc != 0 {
        return Err(WorkerError::Limit {
            bytes,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Pins asked of the daemon.
struct DaemonPin(Arc<Mutex<Pipe>>);

fn external(e: WireError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl RemotePin for DaemonPin {
    async fn pin(&self, filter: &TailFilter) -> DFResult<(Option<i64>, Vec<RecordBatch>)> {
        let mut p = self.0.lock().await;
        wire::write_json(&mut p.w, Kind::Scan, filter)
            .await
            .map_err(external)?;
        match wire::read_frame(&mut p.r, u32::MAX as usize)
            .await
            .map_err(external)?
        {
            Some((Kind::Pinned, payload)) => {
                let (head, rows) = wire::decode_pinned(&payload).map_err(external)?;
                Ok((head.snapshot_id, rows))
            }
            Some((Kind::Error, payload)) => {
                let e: ErrorFrame =
                    serde_json::from_slice(&payload).map_err(|e| external(WireError::Json(e)))?;
                Err(DataFusionError::Execution(e.detail))
            }
            other => Err(DataFusionError::Execution(format!(
                "the daemon answered a scan with {:?}",
                other.map(|(k, _)| k)
            ))),
        }
    }
}
