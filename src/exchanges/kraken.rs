//! Kraken: placeholder, being written.

use super::{Frame, FrameError, ParseCtx, Protocol};
use crate::config::{FeedConfig, ProtocolKind};
use crate::model::TradeV2;

pub struct KrakenV2;
pub struct KrakenV1;

macro_rules! stub {
    ($t:ident, $k:expr) => {
        impl Protocol for $t {
            fn kind(&self) -> ProtocolKind {
                $k
            }
            fn subscribe_frames(&self, _feed: &FeedConfig) -> Vec<String> {
                Vec::new()
            }
            fn frame_symbol(&self, configured: &str) -> String {
                configured.to_string()
            }
            fn instrument(&self, _symbol: &str) -> Option<String> {
                None
            }
            fn parse(
                &self,
                _text: &str,
                _ctx: &ParseCtx<'_>,
                _out: &mut Vec<TradeV2>,
            ) -> Result<Frame, FrameError> {
                Err(FrameError::Invalid {
                    field: "frame",
                    reason: "not implemented".into(),
                })
            }
        }
    };
}
stub!(KrakenV2, ProtocolKind::Kraken);
stub!(KrakenV1, ProtocolKind::KrakenV1);
