//! `POST /v1/sql` in a process of its own.
//!
//! A statement is the least trusted input the daemon takes, and some of
//! what it can ask for cannot be bounded from inside the process: the
//! memory pool counts what DataFusion's operators reserve, but a cross
//! join copies one value into every row of its output batch, and `||`
//! chains copy their inputs as often as the statement names them, without
//! asking anyone. On stable Rust an allocation that fails aborts the
//! process, and the daemon's process holds the tail, the producer's queue
//! and everything not yet committed.
//!
//! So each statement runs in a SQL worker: the daemon's own binary as
//! `ticklake sql-worker`, with its address space capped at
//! `api.sql_worker_memory_bytes` (it sets the limit itself, first thing).
//! The worker opens the catalog and plans and runs the statement with the
//! same guard, limits and timeout as before; for `market.trades_live` it
//! asks the daemon for a pin (`Scan`), and the daemon answers with the
//! snapshot id and the tail rows past its offsets (`Pinned`, Arrow IPC),
//! so the answer is exactly the one the daemon would give. The answer
//! comes back as its JSON text. A worker that dies (an allocation past its
//! limit, a crash) fails its query alone: 507 when it ran out of memory,
//! 500 otherwise, counted in `ticklake_query_workers_lost_total{cause}`.
//! At the deadline the daemon kills it, wherever it is.
//!
//! Starting a worker (process, catalog, session) costs tens of
//! milliseconds, so a worker serves statement after statement: one that
//! answered goes back to an idle list (at most [`IDLE_WORKERS`]), and one
//! is started ahead whenever a statement takes the last. A worker that
//! died, was killed at a deadline or broke the protocol is not reused.
//!
//! The fixed-shape endpoints (`/v1/trades`, `/recent`, `/ohlcv`, …) build
//! their own plans, which take no such values, and run in the daemon.

pub mod wire;
pub mod worker;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use prometheus::IntCounterVec;
use tokio::io::BufReader;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use self::wire::{ErrorFrame, Kind, PinnedHead, QueryFrame, WireError};
use super::budget::AnswerMemory;
use super::hybrid::HybridTable;
use crate::config::Config;
use crate::messages::query::{Answer, QueryError};
use crate::messages::tail::TailFilter;

/// The CLI verb a worker runs as.
pub const VERB: &str = "sql-worker";

/// Workers kept started and waiting for a statement. Each maps about
/// 2 GB of address space and holds tens of MB; statements beyond these
/// start their own.
pub const IDLE_WORKERS: usize = 2;

/// Why a worker was lost, as the metric's `cause` label.
pub const CAUSES: [&str; 3] = ["memory", "crash", "protocol"];

#[derive(Debug, thiserror::Error)]
pub enum IsolateError {
    #[error("the daemon's config does not serialize for the SQL worker: {0}")]
    Config(#[from] serde_json::Error),
    #[error("starting a SQL worker ({exe}): {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the SQL worker's pipe: {0}")]
    Wire(#[from] WireError),
}

/// The daemon's side: starts workers and runs statements in them.
pub struct SqlWorkers {
    exe: PathBuf,
    /// The daemon's config as JSON: the worker's first frame.
    config: Vec<u8>,
    /// Longest answer accepted from a worker: its own answer memory is
    /// `api.max_memory_bytes`.
    answer_limit: usize,
    memory_bytes: u64,
    idle: Mutex<Vec<Worker>>,
    /// Where the workers' spill directories are (`session::spill_root`).
    spill_root: PathBuf,
    /// Whether a worker is started ahead when the idle list runs empty
    /// (the daemon; not a one-shot CLI query).
    ahead: bool,
    lost: Option<IntCounterVec>,
}

impl std::fmt::Debug for SqlWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlWorkers")
            .field("exe", &self.exe)
            .field("memory_bytes", &self.memory_bytes)
            .finish()
    }
}

/// One started worker.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its spill directory (`session::spill_dir_of`), removed with it.
    spill: Option<PathBuf>,
}

/// A worker dropped is killed (`kill_on_drop`) or, idle, exits as its
/// stdin closes; a killed one never removes its own spill files. Removing
/// the directory while the process ends is safe: its open files go with
/// their last descriptor, and it cannot make new ones in a directory that
/// is gone.
impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(dir) = self.spill.take()
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "query: could not remove a SQL worker's spill directory");
        }
    }
}

impl SqlWorkers {
    /// Workers of `exe` (the daemon's own binary) for `cfg`; `lost` counts
    /// the ones that died, by cause.
    pub fn new(
        exe: PathBuf,
        cfg: &Config,
        lost: Option<IntCounterVec>,
    ) -> Result<Self, IsolateError> {
        Ok(Self {
            exe,
            config: serde_json::to_vec(cfg)?,
            answer_limit: cfg.api.max_memory_bytes,
            memory_bytes: cfg.api.sql_worker_memory_bytes,
            idle: Mutex::new(Vec::new()),
            spill_root: super::session::spill_root(cfg),
            ahead: true,
            lost,
        })
    }

    /// The same, starting workers only when a statement needs one.
    pub fn on_demand(mut self) -> Self {
        self.ahead = false;
        self
    }

    async fn start(&self) -> Result<Worker, IsolateError> {
        let mut child = Command::new(&self.exe)
            .arg(VERB)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its log lines join the daemon's.
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| IsolateError::Spawn {
                exe: self.exe.clone(),
                source,
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(IsolateError::Wire(WireError::Io(std::io::Error::other(
                "the worker's pipes were not opened",
            ))));
        };
        let spill = child
            .id()
            .map(|pid| super::session::spill_dir_of(&self.spill_root, pid));
        let mut worker = Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            spill,
        };
        wire::write_frame(&mut worker.stdin, Kind::Config, &self.config).await?;
        Ok(worker)
    }

    /// Starts a worker ahead of the next statement.
    pub async fn warm(&self) {
        match self.start().await {
            Ok(w) => self.give_back(w),
            Err(e) => tracing::warn!(error = %e, "query: starting a SQL worker ahead failed"),
        }
    }

    /// An idle worker that is still alive, or a new one; a statement that
    /// takes the last idle one starts the next ahead.
    async fn take(self: &Arc<Self>) -> Result<Worker, IsolateError> {
        // Idle workers that died meanwhile are dropped on the way.
        let found = loop {
            let Some(mut w) = self.idle.lock().ok().and_then(|mut i| i.pop()) else {
                break None;
            };
            if matches!(w.child.try_wait(), Ok(None)) {
                break Some(w);
            }
        };
        let now_empty = self.idle.lock().map(|i| i.is_empty()).unwrap_or(true);
        if now_empty && self.ahead {
            let this = self.clone();
            tokio::spawn(async move { this.warm().await });
        }
        match found {
            Some(w) => Ok(w),
            None => self.start().await,
        }
    }

    /// Back to the idle list after a statement it answered, unless the
    /// list is full (then it exits: its stdin closes when it is dropped).
    fn give_back(&self, w: Worker) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_WORKERS
        {
            idle.push(w);
        }
    }

    /// Runs `sql` in a worker: scans of `market.trades_live` pin on `live`
    /// here; the answer is counted on `memory` until sent. Dropping the
    /// future kills the worker.
    pub async fn run(
        self: &Arc<Self>,
        sql: &str,
        live: &HybridTable,
        memory: &AnswerMemory,
    ) -> Result<Answer, QueryError> {
        let mut w = self.take().await.map_err(QueryError::internal)?;
        let query = QueryFrame {
            sql: sql.to_string(),
        };
        if let Err(e) = wire::write_json(&mut w.stdin, Kind::Query, &query).await {
            return Err(self.lost(&mut w, e).await);
        }
        loop {
            let frame = match wire::read_frame(&mut w.stdout, self.answer_limit).await {
                Ok(Some(f)) => f,
                Ok(None) => return Err(self.lost(&mut w, WireError::Closed).await),
                Err(e) => return Err(self.lost(&mut w, e).await),
            };
            match frame {
                (Kind::Scan, payload) => {
                    let pinned = self.pin(live, &payload).await;
                    let sent = match &pinned {
                        Ok(p) => wire::write_frame(&mut w.stdin, Kind::Pinned, p).await,
                        Err(e) => {
                            wire::write_json(&mut w.stdin, Kind::Error, &ErrorFrame::of(e)).await
                        }
                    };
                    if let Err(e) = sent {
                        return Err(self.lost(&mut w, e).await);
                    }
                }
                (Kind::Answer, text) => {
                    self.give_back(w);
                    let held = memory.empty();
                    memory.grow(&held, text.len(), "the answer's text")?;
                    return Ok(Answer::from_parts(vec![text], Some(held)));
                }
                (Kind::Error, payload) => {
                    return match serde_json::from_slice::<ErrorFrame>(&payload) {
                        Ok(e) => {
                            self.give_back(w);
                            Err(e.into_error())
                        }
                        Err(e) => Err(self.lost(&mut w, e.into()).await),
                    };
                }
                (kind, _) => {
                    let e = WireError::Io(std::io::Error::other(format!(
                        "unexpected frame {kind:?} from the worker"
                    )));
                    return Err(self.lost(&mut w, e).await);
                }
            }
        }
    }

    /// A pin for the worker's scan, as a `Pinned` payload.
    async fn pin(&self, live: &HybridTable, filter: &[u8]) -> Result<Vec<u8>, QueryError> {
        let filter: TailFilter = serde_json::from_slice(filter).map_err(QueryError::internal)?;
        let pin = live
            .pin_now(&filter)
            .await
            .map_err(|e| QueryError::Unavailable(format!("pinning the lake and tail: {e}")))?;
        let head = PinnedHead {
            snapshot_id: pin.snapshot_id(),
        };
        wire::encode_pinned(&head, pin.rows()).map_err(QueryError::internal)
    }

    /// The worker stopped talking: what became of it, counted and said.
    async fn lost(&self, w: &mut Worker, e: WireError) -> QueryError {
        // A worker that closed its pipe is exiting; one that wrote
        // nonsense is stopped.
        let status =
            match tokio::time::timeout(std::time::Duration::from_secs(5), w.child.wait()).await {
                Ok(Ok(s)) => Some(s),
                _ => {
                    let _ = w.child.kill().await;
                    None
                }
            };
        let (cause, err) = self.classify(status, &e);
        if let Some(lost) = &self.lost {
            lost.with_label_values(&[cause]).inc();
        }
        tracing::warn!(cause, error = %e, status = ?status, "query: a SQL worker was lost; its query fails alone");
        err
    }

    fn classify(&self, status: Option<ExitStatus>, e: &WireError) -> (&'static str, QueryError) {
        use std::os::unix::process::ExitStatusExt;
        match status.and_then(|s| s.signal()) {
            // An allocation past the worker's address space aborts it; so
            // does the kernel's OOM killer (SIGKILL) on a host short of
            // memory.
            Some(libc::SIGABRT) | Some(libc::SIGKILL) => (
                "memory",
                QueryError::OverMemory(format!(
                    "the statement needed more memory than a SQL worker may map \
                     (api.sql_worker_memory_bytes = {} bytes); its worker process was \
                     stopped and the daemon carries on; narrow the query",
                    self.memory_bytes
                )),
            ),
            Some(sig) => (
                "crash",
                QueryError::Internal(format!(
                    "the SQL worker running the statement crashed (signal {sig}); the daemon carries on"
                )),
            ),
            None => (
                "protocol",
                QueryError::Internal(format!(
                    "the SQL worker running the statement stopped answering ({e}; exit {status:?}); \
                     the daemon carries on"
                )),
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Session(#[from] super::session::SessionError),
    #[error(transparent)]
    Isolate(#[from] IsolateError),
    #[error("the SQL worker is this binary, whose path is unknown: {0}")]
    Exe(std::io::Error),
    #[error("refused: {0}")]
    Rejected(String),
    #[error("{code}: {detail}")]
    Failed { code: &'static str, detail: String },
    #[error("the answer is not JSON: {0}")]
    Answer(#[from] serde_json::Error),
}

/// `ticklake query` with no daemon running: the statement over the
/// committed lake, under the same guard, limits and isolation as
/// `POST /v1/sql`, answered as the API would (decimals as strings).
pub async fn run_local(cfg: &Config, sql: &str) -> Result<serde_json::Value, LocalError> {
    // Declared before the engine, so dropped after it, on every return.
    let _spill = super::session::OwnSpill::of(cfg);
    let mut engine = super::session::engine(cfg, None).await?;
    if cfg.api.sql_isolation {
        let exe = std::env::current_exe().map_err(LocalError::Exe)?;
        engine = engine.with_sql_workers(Arc::new(SqlWorkers::new(exe, cfg, None)?.on_demand()));
    }
    let request = crate::messages::query::QueryRequest::Sql(sql.to_string());
    match engine.run(request).await {
        Ok(answer) => Ok(serde_json::from_str(&answer.text())?),
        Err(QueryError::Rejected(why)) => Err(LocalError::Rejected(why)),
        Err(e) => Err(LocalError::Failed {
            code: e.code(),
            detail: e.to_string(),
        }),
    }
}
