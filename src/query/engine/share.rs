//! A daemon of a consumer group (`kafka.assignment = group`): its answers
//! name the partitions their uncommitted rows can come from.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Answer, Engine, JsonRows, QueryError, answer};

impl Engine {
    /// The same engine in a daemon that shares its topics' partitions with
    /// other daemons of a consumer group: every hybrid answer says which
    /// partitions its uncommitted rows can come from.
    pub fn sharing(mut self, share: Arc<crate::lake::share::Seen>) -> Self {
        self.share = Some(share);
        self
    }

    /// `head` with `tail_partitions` when the daemon shares its partitions:
    /// the committed lake is the whole table's, the tail only this
    /// daemon's partitions'.
    fn covering(&self, mut head: Value) -> Value {
        if let (Some(share), Some(h)) = (&self.share, head.as_object_mut())
            && h.contains_key("tail_rows_scanned")
        {
            h.insert("tail_partitions".into(), json!(share.owned_list()));
        }
        head
    }

    /// `answer` of `head` (`covering` it) and `rows` under `key`.
    pub(super) fn answer_shared(
        &self,
        head: Value,
        key: &str,
        rows: JsonRows,
    ) -> Result<Answer, QueryError> {
        answer(self.covering(head), key, rows)
    }
}
