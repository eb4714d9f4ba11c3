//! `Observe<S>`: the one message every actor answers with its observable
//! state `S`. It is answered in mailbox order, after every message sent
//! before it, so a test can "process what is pending, then observe"
//! instead of sleeping.

use std::marker::PhantomData;

use actix::Message;
use serde::Serialize;

pub struct Observe<S>(PhantomData<fn() -> S>);

impl<S> Observe<S> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<S> Default for Observe<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: 'static> Message for Observe<S> {
    type Result = S;
}

/// What every actor reports the same way. Flattened into each state, so
/// `restarts` and `last_error` sit beside the actor's own fields.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Health {
    /// Restarts by its supervisor (or in place, for a writer rewinding).
    pub restarts: u64,
    pub last_error: Option<String>,
}
