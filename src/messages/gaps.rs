//! Messages of the gaps writer (`actors::gaps`): one settled gap in a
//! feed's trade ids each.

use actix::prelude::*;

pub use crate::lake::gaps::GapRecord;

/// A gap that was settled, to be written to `market.gaps`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct GapSettled(pub GapRecord);
