//! A query's deadline (`api.timeout_ms`), and what stops the query
//! wherever it is when the deadline passes.
//!
//! A timer around the query's future only stops it at an `.await`; the
//! synchronous stretches (parsing, optimizing, planning, encoding the
//! answer) and the tasks DataFusion spawns run on regardless. So:
//!
//! - the engine checks `Cancel::check` between planning phases and between
//!   batches and parts of the answer, and stops with `Timeout` there;
//! - every operator of a query's physical plan is wrapped (`Cancel::track`)
//!   so that its stream ends with an error once the query is cancelled,
//!   stopping DataFusion's own tasks at their next batch, and so that the
//!   query knows how many of its streams are still alive anywhere;
//! - `Cancel::stopped` resolves once none is: the query actor holds the
//!   query's concurrency slot until then, so `api.max_concurrent` bounds
//!   work that really runs, not only requests waiting for an answer.

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Statistics;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::Stream;
use tokio::time::Instant;

use crate::messages::query::QueryError;

/// One query's deadline and cancellation, shared by everything that works
/// for it. Cloning shares it.
#[derive(Clone)]
pub struct Cancel(Arc<Inner>);

struct Inner {
    timeout_ms: u64,
    deadline: Instant,
    cancelled: AtomicBool,
    /// Streams of this query's plans that are alive, in any task.
    live: AtomicUsize,
    /// Woken when `live` drops to zero.
    idle: tokio::sync::Notify,
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancel")
            .field("timeout_ms", &self.0.timeout_ms)
            .field("cancelled", &self.is_cancelled())
            .field("live_streams", &self.0.live.load(Ordering::Relaxed))
            .finish()
    }
}

impl Cancel {
    /// A query that may run for `timeout_ms` from now.
    pub fn after(timeout_ms: u64) -> Self {
        Self(Arc::new(Inner {
            timeout_ms,
            deadline: Instant::now() + std::time::Duration::from_millis(timeout_ms),
            cancelled: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }))
    }

    pub fn timeout_ms(&self) -> u64 {
        self.0.timeout_ms
    }

    pub fn deadline(&self) -> Instant {
        self.0.deadline
    }

    /// Stops the query at its next check, before its deadline.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether the query must stop: cancelled, or past its deadline.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed) || Instant::now() >= self.0.deadline
    }

    /// `Timeout` once the query must stop.
    pub fn check(&self) -> Result<(), QueryError> {
        if self.is_cancelled() {
            Err(QueryError::Timeout(self.0.timeout_ms))
        } else {
            Ok(())
        }
    }

    /// `plan` with every operator wrapped, so that its streams end once the
    /// query is cancelled and count as this query's live streams. Run
    /// after every optimizer: the wrappers change no property of the plan.
    pub fn track(&self, plan: Arc<dyn ExecutionPlan>) -> DFResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(Transformed::yes(Arc::new(Tracked {
                inner: node,
                cancel: self.clone(),
            }) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    /// Resolves once no stream of this query's plans is alive: the tasks
    /// that ran them have all ended, wherever they were when the query was
    /// dropped or cancelled.
    pub async fn stopped(&self) {
        loop {
            let idle = self.0.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a drop to zero in
            // between still wakes it.
            idle.as_mut().enable();
            if self.0.live.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// How many of this query's streams are alive, for tests.
    pub fn live_streams(&self) -> usize {
        self.0.live.load(Ordering::Acquire)
    }
}

/// An operator of a tracked plan, with the same properties as the operator
/// it wraps.
struct Tracked {
    inner: Arc<dyn ExecutionPlan>,
    cancel: Cancel,
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl DisplayAs for Tracked {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Tracked")
    }
}

impl ExecutionPlan for Tracked {
    fn name(&self) -> &str {
        "Tracked"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.inner]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "a tracked operator has one child, got {}",
                children.len()
            )));
        }
        Ok(Arc::new(Tracked {
            inner: children.swap_remove(0),
            cancel: self.cancel.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let inner = self.inner.execute(partition, context)?;
        self.cancel.0.live.fetch_add(1, Ordering::AcqRel);
        Ok(Box::pin(TrackedStream {
            inner,
            cancel: self.cancel.clone(),
        }))
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DFResult<Statistics> {
        self.inner.partition_statistics(partition)
    }
}

/// A stream of a tracked operator: counted alive until dropped, and ended
/// with an error once the query is cancelled.
struct TrackedStream {
    inner: SendableRecordBatchStream,
    cancel: Cancel,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        if self.cancel.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.cancel.0.idle.notify_waiters();
        }
    }
}

impl Stream for TrackedStream {
    type Item = DFResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.cancel.is_cancelled() {
            return Poll::Ready(Some(Err(DataFusionError::Execution(format!(
                "query cancelled: past its time limit of {} ms",
                self.cancel.0.timeout_ms
            )))));
        }
        self.inner.as_mut().poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl RecordBatchStream for TrackedStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}
