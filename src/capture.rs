// placeholder until the capture module lands
use std::path::{Path, PathBuf};
pub struct CapturedFrame {
    pub ts: Option<f64>,
    pub data: String,
}
pub enum CaptureFormat {
    Recorder1,
    Recorder2,
    Plain,
}
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("x")]
    X,
}
pub fn read_capture(_path: &Path) -> Result<(CaptureFormat, Vec<CapturedFrame>), CaptureError> {
    Err(CaptureError::X)
}
pub fn read_captures(_paths: &[PathBuf]) -> Result<Vec<CapturedFrame>, CaptureError> {
    Err(CaptureError::X)
}
