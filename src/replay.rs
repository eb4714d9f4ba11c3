// placeholder until the replay module lands
use crate::capture::CapturedFrame;
pub struct ReplayOptions {
    pub frames: std::sync::Arc<Vec<CapturedFrame>>,
    pub pacing: Pacing,
    pub looped: bool,
    pub live: bool,
}
pub enum Pacing {
    AsFastAsPossible,
    Speed(f64),
    Rate(f64),
}
pub struct ReplayServer;
pub struct ReplayStats {
    pub clients: u64,
    pub frames_sent: u64,
}
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("x")]
    X,
}
impl ReplayServer {
    pub async fn bind(
        _addr: std::net::SocketAddr,
        _opts: ReplayOptions,
    ) -> Result<Self, ReplayError> {
        Err(ReplayError::X)
    }
    pub fn local_addr(&self) -> std::net::SocketAddr {
        unimplemented!()
    }
    pub async fn run(
        self,
        _shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<ReplayStats, ReplayError> {
        Err(ReplayError::X)
    }
}
