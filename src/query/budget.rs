//! The memory a query's answer holds, counted against `api.max_memory_bytes`.
//!
//! DataFusion's operators (sorts, joins, aggregations) draw on the
//! session's memory pool, sized by `api.max_memory_bytes`. What they emit
//! is not counted there: the record batches an answer collects, and the
//! JSON text it is encoded into, can be far larger (a result of huge
//! strings). So both are reserved on the same pool, before they are kept
//! or allocated; a query whose answer would need more than is left fails
//! with `QueryError::OverMemory` instead of growing the daemon. The pool is
//! shared by the queries running at once.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};

use crate::messages::query::QueryError;

/// One query's answer memory: reservations on the session's pool.
pub struct AnswerMemory {
    pool: Arc<dyn MemoryPool>,
    /// Empty; the reservations of the parts are made from it.
    root: MemoryReservation,
    limit: usize,
}

impl AnswerMemory {
    /// `limit` is the pool's size (`api.max_memory_bytes`), for messages.
    pub fn new(pool: &Arc<dyn MemoryPool>, limit: usize) -> Self {
        Self {
            pool: pool.clone(),
            root: MemoryConsumer::new("query answer").register(pool),
            limit,
        }
    }

    /// An empty reservation, to grow with `grow`.
    pub fn empty(&self) -> MemoryReservation {
        self.root.new_empty()
    }

    /// Adds `bytes` to `held` for `what`, or fails when the pool has not
    /// that much left.
    pub fn grow(
        &self,
        held: &MemoryReservation,
        bytes: usize,
        what: &str,
    ) -> Result<(), QueryError> {
        held.try_grow(bytes).map_err(|_| {
            QueryError::OverMemory(format!(
                "{what} needs {bytes} more bytes, and {} of the {} bytes of api.max_memory_bytes \
                 are free (the queries running at once share them); narrow the query",
                self.limit.saturating_sub(self.pool.reserved()),
                self.limit,
            ))
        })
    }

    /// Counts `batch` into `held`: the memory of its buffers, which the
    /// answer keeps alive (slices of larger buffers count whole).
    pub fn hold_batch(
        &self,
        held: &MemoryReservation,
        batch: &RecordBatch,
    ) -> Result<(), QueryError> {
        self.grow(held, batch.get_array_memory_size(), "the answer's rows")
    }
}

/// Record batches with the reservation that counts them; dropping it
/// returns their memory to the pool.
pub struct Held {
    pub batches: Vec<RecordBatch>,
    _memory: MemoryReservation,
}

impl Held {
    pub fn new(batches: Vec<RecordBatch>, memory: MemoryReservation) -> Self {
        Self {
            batches,
            _memory: memory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    #[test]
    fn reservations_past_the_pool_fail_with_the_limit_named() {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1000));
        let memory = AnswerMemory::new(&pool, 1000);
        let a = memory.empty();
        memory.grow(&a, 600, "the rows").unwrap();
        let b = memory.empty();
        let e = memory.grow(&b, 500, "the text").unwrap_err();
        let QueryError::OverMemory(m) = &e else {
            panic!("{e:?}")
        };
        assert!(
            m.contains("the text needs 500 more bytes")
                && m.contains("400 of the 1000 bytes of api.max_memory_bytes"),
            "{m}"
        );
        // Freed on drop: the same reservation fits once the first is gone.
        drop(a);
        memory.grow(&b, 500, "the text").unwrap();
        assert_eq!(pool.reserved(), 500);
    }
}
