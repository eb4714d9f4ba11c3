//! Recorded exchange WebSocket captures: the frames a client received, read
//! back for `ticklake replay` and `ticklake produce`.
//!
//! Three file forms are understood, told apart by the first line that is
//! neither blank nor a `#` comment:
//!
//! - recorder format 1 (`*.ws.N.0.txt`): `<url> <-> <ts>` opens a connection,
//!   `<ts>: <frame>` is a received frame, and the sent (`<url> <- <ts>: ...`),
//!   REST (`<url> -> <ts>: ...`) and `configuration: ...` lines are skipped;
//! - recorder format 2 (`*.jsonl`): one JSON record per line, of which only
//!   `{"t":"recv","ts":...,"data":"<frame>"}` carries a received frame;
//! - plain: one frame per line, without timestamps.
//!
//! Any of them may be zstd-compressed (`*.jsonl.zst`, as `ticklake record`
//! writes them; told by the zstd magic number, not the name). A compressed
//! file is a sequence of zstd frames; one whose last frame is incomplete (the
//! recorder was killed while writing it) is still read: every complete frame,
//! plus the whole lines of the incomplete one's complete blocks, and
//! [`CaptureReport::truncated`] says what was cut off.
//!
//! In format 2, a received binary WebSocket frame is a `recv` record with a
//! `"b64"` field (base64) instead of `"data"`; it is skipped and counted
//! ([`CaptureReport::binary_skipped`]), since replay serves text frames.
//!
//! Only frames the exchange sent are kept, because replay plays the exchange's
//! side of the conversation.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One frame as the exchange sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedFrame {
    /// Unix seconds at which the recorder received the frame; `None` in plain files.
    pub ts: Option<f64>,
    /// The frame text exactly as received.
    pub data: String,
}

/// How a capture file was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    /// `<url> <-> <ts>` / `<ts>: <frame>` text lines.
    Recorder1,
    /// JSON lines with a `"t"` record type.
    Recorder2,
    /// One frame per line, no timestamps.
    Plain,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read capture {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed capture line {}:{line}: {reason}", path.display())]
    Parse {
        path: PathBuf,
        /// 1-based line number in the file (in the decompressed text of a
        /// compressed file).
        line: usize,
        reason: String,
    },
    /// A complete zstd frame that does not decode (a corrupt file, as
    /// opposed to a truncated one).
    #[error("corrupt zstd frame in capture {} at byte {offset}: {reason}", path.display())]
    Zstd {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// One capture file as read: its frames and what was passed over.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureReport {
    pub format: CaptureFormat,
    /// The received text frames, in file order.
    pub frames: Vec<CapturedFrame>,
    /// The file was zstd-compressed.
    pub compressed: bool,
    /// Received binary frames (format 2 `recv` records with `"b64"`), skipped.
    pub binary_skipped: u64,
    /// The compressed file ends inside a zstd frame; what was lost.
    pub truncated: Option<Truncation>,
}

/// Where a compressed capture was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// Byte offset, in the file, of the incomplete zstd frame.
    pub offset: u64,
    /// Bytes from there to the end of the file.
    pub tail_bytes: u64,
    /// Decompressed bytes recovered from the incomplete frame's complete
    /// blocks, up to its last whole line (0 when none was).
    pub recovered_bytes: u64,
}

impl fmt::Display for Truncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "truncated: the zstd frame at byte {} is incomplete ({} bytes to the end of the file); \
             read every complete frame before it and {} bytes of whole lines from it",
            self.offset, self.tail_bytes, self.recovered_bytes
        )
    }
}

/// Reads one capture file, detecting its format, and returns the received
/// frames in file order. A truncated compressed file is read up to the cut
/// and logged as a warning; [`read_capture_report`] tells it to the caller.
pub fn read_capture(path: &Path) -> Result<(CaptureFormat, Vec<CapturedFrame>), CaptureError> {
    let report = read_capture_report(path)?;
    log_report(path, &report);
    Ok((report.format, report.frames))
}

/// Reads one capture file, compressed or not, with what was skipped or cut
/// off besides the frames.
pub fn read_capture_report(path: &Path) -> Result<CaptureReport, CaptureError> {
    let bytes = std::fs::read(path).map_err(|source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_capture_report(path, &bytes)
}

/// Reads several capture files and concatenates their frames in the order
/// the paths are given. Each file's format is detected on its own.
pub fn read_captures(paths: &[PathBuf]) -> Result<Vec<CapturedFrame>, CaptureError> {
    let mut frames = Vec::new();
    for path in paths {
        let (format, mut more) = read_capture(path)?;
        tracing::debug!(path = %path.display(), ?format, frames = more.len(), "read capture");
        frames.append(&mut more);
    }
    Ok(frames)
}

fn log_report(path: &Path, report: &CaptureReport) {
    if let Some(cut) = &report.truncated {
        tracing::warn!(
            path = %path.display(),
            frames = report.frames.len(),
            "capture {cut}"
        );
    }
    if report.binary_skipped > 0 {
        tracing::warn!(
            path = %path.display(),
            skipped = report.binary_skipped,
            "capture holds binary frames; skipped them (replay serves text frames)"
        );
    }
}

/// The zstd frame magic number, little-endian, as it opens a file.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Capture contents, compressed or not; `path` only names the file in errors.
fn parse_capture_report(path: &Path, bytes: &[u8]) -> Result<CaptureReport, CaptureError> {
    let (text, compressed, truncated) = if bytes.starts_with(&ZSTD_MAGIC) {
        let (text, truncated) = decompress(path, bytes)?;
        (std::borrow::Cow::Owned(text), true, truncated)
    } else {
        (std::borrow::Cow::Borrowed(bytes), false, None)
    };
    let parsed = parse_text(path, &text)?;
    Ok(CaptureReport {
        format: parsed.format,
        frames: parsed.frames,
        compressed,
        binary_skipped: parsed.binary_skipped,
        truncated,
    })
}

/// Decompresses a sequence of zstd frames. Each complete frame is decoded
/// whole; an incomplete last frame (a killed writer) yields the whole lines
/// of its complete blocks and is reported instead of failing the file.
fn decompress(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Option<Truncation>), CaptureError> {
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4));
    let mut offset = 0usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let size = zstd::zstd_safe::find_frame_compressed_size(rest)
            .ok()
            .filter(|&n| n > 0 && n <= rest.len());
        let Some(size) = size else {
            // The frame's blocks run past the end of the file (or its
            // header is cut): keep what its complete blocks decode to.
            let whole_lines = out.len();
            if let Ok(mut decoder) = zstd::stream::read::Decoder::with_buffer(rest) {
                let mut chunk = vec![0u8; 64 * 1024];
                // Ends at the first block that is not all there.
                while let Ok(n @ 1..) = decoder.read(&mut chunk) {
                    out.extend_from_slice(&chunk[..n]);
                }
            }
            // Only whole lines: a record cut in the middle is not one.
            let keep = out
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |newline| newline + 1);
            out.truncate(keep);
            return Ok((
                out,
                Some(Truncation {
                    offset: offset as u64,
                    tail_bytes: rest.len() as u64,
                    recovered_bytes: keep.saturating_sub(whole_lines) as u64,
                }),
            ));
        };
        let frame = &rest[..size];
        let decoded = zstd::stream::decode_all(frame).map_err(|e| CaptureError::Zstd {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason: e.to_string(),
        })?;
        out.extend_from_slice(&decoded);
        offset += size;
    }
    Ok((out, None))
}

/// Parses uncompressed capture contents; `path` is only used to name the
/// file in errors.
#[cfg(test)]
fn parse_capture(
    path: &Path,
    bytes: &[u8],
) -> Result<(CaptureFormat, Vec<CapturedFrame>), CaptureError> {
    let parsed = parse_text(path, bytes)?;
    Ok((parsed.format, parsed.frames))
}

struct ParsedText {
    format: CaptureFormat,
    frames: Vec<CapturedFrame>,
    binary_skipped: u64,
}

/// What one capture line holds.
enum Line {
    Frame(CapturedFrame),
    /// A received binary frame (format 2 `"b64"`).
    Binary,
    /// Not a received frame.
    Other,
}

fn parse_text(path: &Path, bytes: &[u8]) -> Result<ParsedText, CaptureError> {
    let parse_error = |line: usize, reason: String| CaptureError::Parse {
        path: path.to_path_buf(),
        line,
        reason,
    };

    // Decoded up front so that a bad byte anywhere is reported with its line
    // number, not as an I/O error for the whole file.
    let mut lines = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(raw)
            .map_err(|e| parse_error(index + 1, format!("not valid utf-8: {e}")))?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = if index == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if !is_skipped(line) {
            lines.push((index + 1, line));
        }
    }

    let format = lines
        .first()
        .map_or(CaptureFormat::Plain, |&(_, first)| detect_format(first));

    let mut frames = Vec::with_capacity(lines.len());
    let mut binary_skipped = 0;
    for (number, line) in lines {
        let parsed = match format {
            CaptureFormat::Recorder1 => {
                recorder1_frame(line).map(|f| f.map_or(Line::Other, Line::Frame))
            }
            CaptureFormat::Recorder2 => recorder2_frame(line),
            CaptureFormat::Plain => Ok(Line::Frame(CapturedFrame {
                ts: None,
                data: line.to_owned(),
            })),
        }
        .map_err(|reason| parse_error(number, reason))?;
        match parsed {
            Line::Frame(frame) => frames.push(frame),
            Line::Binary => binary_skipped += 1,
            Line::Other => {}
        }
    }
    Ok(ParsedText {
        format,
        frames,
        binary_skipped,
    })
}

fn is_skipped(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#')
}

fn detect_format(first: &str) -> CaptureFormat {
    if first.trim_start().starts_with("{\"t\":") {
        return CaptureFormat::Recorder2;
    }
    // A connect line is what the recorder writes first, but a file split off
    // the middle of a recording (or one opening with its configuration) is
    // still format 1: reading its `<ts>: <frame>` lines as plain frames would
    // silently keep the timestamps inside the frame text.
    match classify_recorder1(first) {
        Ok(_) => CaptureFormat::Recorder1,
        Err(_) => CaptureFormat::Plain,
    }
}

enum Recorder1Line<'a> {
    Received {
        ts: f64,
        data: &'a str,
    },
    /// Connect, sent frame, REST reply or configuration.
    Other,
}

fn recorder1_frame(line: &str) -> Result<Option<CapturedFrame>, String> {
    Ok(match classify_recorder1(line)? {
        Recorder1Line::Received { ts, data } => Some(CapturedFrame {
            ts: Some(ts),
            data: data.to_owned(),
        }),
        Recorder1Line::Other => None,
    })
}

fn classify_recorder1(line: &str) -> Result<Recorder1Line<'_>, String> {
    if line.starts_with("configuration:") {
        return Ok(Recorder1Line::Other);
    }
    // Tried before the arrow forms: a received frame's text may itself
    // contain ` <-> ` or ` -> `, but no URL parses as a timestamp.
    if let Some((head, data)) = line.split_once(": ")
        && let Some(ts) = parse_ts(head)
    {
        return Ok(Recorder1Line::Received { ts, data });
    }
    let mut parts = line.splitn(3, ' ');
    let (Some(url), Some(arrow), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(unrecognised_recorder1());
    };
    if url.is_empty() {
        return Err(unrecognised_recorder1());
    }
    let ts_ok = match arrow {
        "<->" => parse_ts(rest.trim_end()).is_some(),
        // `<-` is a frame the client sent, `->` a REST reply; neither came
        // over the WebSocket from the exchange.
        "<-" | "->" => rest
            .split_once(": ")
            .and_then(|(ts, _)| parse_ts(ts))
            .is_some(),
        _ => return Err(unrecognised_recorder1()),
    };
    if ts_ok {
        Ok(Recorder1Line::Other)
    } else {
        Err(format!("`{arrow}` line has no valid timestamp"))
    }
}

fn unrecognised_recorder1() -> String {
    "expected `<ts>: <frame>`, `<url> <-> <ts>`, `<url> <- <ts>: ...`, \
     `<url> -> <ts>: ...` or `configuration: ...`"
        .to_owned()
}

/// Recorder timestamps are plain decimals (`1617566591.326123`); anything
/// else `f64::from_str` would accept (`inf`, `1e9`, `-3`) is not one.
fn parse_ts(s: &str) -> Option<f64> {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let dots = s.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != s.len() {
        return None;
    }
    s.parse::<f64>().ok().filter(|ts| ts.is_finite())
}

#[derive(Deserialize)]
struct Recorder2Kind {
    t: String,
}

#[derive(Deserialize)]
struct Recorder2Recv {
    ts: f64,
    /// The text frame; absent for a binary one.
    data: Option<String>,
    /// A binary frame, base64 (skipped, so not decoded).
    b64: Option<serde::de::IgnoredAny>,
}

fn recorder2_frame(line: &str) -> Result<Line, String> {
    let kind: Recorder2Kind =
        serde_json::from_str(line).map_err(|e| format!("invalid format 2 record: {e}"))?;
    match kind.t.as_str() {
        "recv" => {
            let recv: Recorder2Recv = serde_json::from_str(line)
                .map_err(|e| format!("invalid format 2 recv record: {e}"))?;
            if !recv.ts.is_finite() {
                return Err(format!("recv record has a non-finite ts {}", recv.ts));
            }
            match (recv.data, recv.b64) {
                (Some(data), _) => Ok(Line::Frame(CapturedFrame {
                    ts: Some(recv.ts),
                    data,
                })),
                (None, Some(_)) => Ok(Line::Binary),
                (None, None) => {
                    Err("invalid format 2 recv record: missing field `data` (or `b64`)".into())
                }
            }
        }
        "header" | "connect" | "send" | "http" | "disconnect" => Ok(Line::Other),
        // Record types a newer recorder may add are not frames the exchange
        // sent, so they are passed over rather than failing the whole file.
        other => {
            tracing::debug!(record_type = other, "skipping unknown format 2 record type");
            Ok(Line::Other)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real lines from cryptofeed's sample_data (MIT, Copyright Bryant Moscon),
    // KRAKEN.ws.48.0.txt and BINANCE-ee25be.0.txt; the REST reply is cut
    // short and the configuration line is in the recorder's format.
    const RECORDER1: &str = r#"wss://ws.kraken.com <-> 1618678132.368463
configuration: {"trades":["XMR-USD"],"log_message_on_error":false}
wss://ws.kraken.com <- 1618678132.83097: {"event":"subscribe","pair":["WAVES/EUR","XMR/USD"],"subscription":{"name":"trade"}}
1618678132.831468: {"connectionID":18239578009413566319,"event":"systemStatus","status":"online","version":"1.8.3"}
1618678132.9348822: {"channelID":993,"channelName":"trade","event":"subscriptionStatus","pair":"XMR/USD","status":"subscribed","subscription":{"name":"trade"}}
# a comment

1618678133.5561652: {"event":"heartbeat"}
https://www.binance.com/api/v1/depth?symbol=DOTUSDT&limit=1000 -> 1617566592.1065369: {"lastUpdateId":1513939277,"bids":[["43.52240000","0.28000000"]],"asks":[]}
1618678142.592855: [993,[["354.11000000","0.89594024","1618678142.557535","s","l",""]],"trade","XMR/USD"]
wss://ws.kraken.com <-> 1618678150.1
1618678145.74465: [993,[["354.55000000","1.25690315","1618678145.715785","b","m",""]],"trade","XMR/USD"]
"#;

    // Real lines from cryptofeed's KRAKEN.jsonl and BINANCE_US.jsonl, with
    // the header's config and the REST reply cut short.
    const RECORDER2: &str = r#"{"t":"header","format":2,"exchange":"KRAKEN","config":{"trades":["XMR-USD"]},"candle_interval":null,"recorded":1618678132.358447,"converted_from":1}
{"t":"http","conn":"KRAKEN.http.sync","ts":1618678132.358447,"url":"https://api.kraken.com/0/public/AssetPairs","data":"{\"error\":[],\"result\":{}}"}
{"t":"connect","conn":"KRAKEN.ws.48","ts":1618678132.368463,"addr":"wss://ws.kraken.com"}
{"t":"send","conn":"KRAKEN.ws.48","ts":1618678132.83097,"addr":"wss://ws.kraken.com","data":"{\"event\":\"subscribe\",\"pair\":[\"XMR/USD\"],\"subscription\":{\"name\":\"trade\"}}"}
{"t":"recv","conn":"KRAKEN.ws.48","ts":1618678132.831468,"data":"{\"connectionID\":18239578009413566319,\"event\":\"systemStatus\",\"status\":\"online\",\"version\":\"1.8.3\"}"}

# a comment
{"t":"recv","conn":"BINANCE_US.ws.1","ts":1633998288.39296,"data":"{\"stream\":\"omgbusd@aggTrade\",\"data\":{\"e\":\"aggTrade\",\"E\":1633998288468,\"s\":\"OMGBUSD\",\"a\":425085,\"p\":\"13.80480000\",\"q\":\"2.10000000\",\"f\":439577,\"l\":439577,\"T\":1633998288467,\"m\":false,\"M\":true}}"}
"#;

    const PLAIN: &str = "# btcusdt trades\r\n\
{\"e\":\"trade\",\"s\":\"BTCUSDT\",\"t\":1}\r\n\
\r\n\
   \n\
{\"e\":\"trade\",\"s\":\"BTCUSDT\",\"t\":2}\n\
not json is kept as is\n";

    fn parse(text: &str) -> Result<(CaptureFormat, Vec<CapturedFrame>), CaptureError> {
        parse_capture(Path::new("fixture.txt"), text.as_bytes())
    }

    fn frame(ts: Option<f64>, data: &str) -> CapturedFrame {
        CapturedFrame {
            ts,
            data: data.to_owned(),
        }
    }

    #[test]
    fn recorder1_keeps_only_received_frames() {
        let (format, frames) = parse(RECORDER1).expect("fixture parses");
        assert_eq!(format, CaptureFormat::Recorder1);
        assert_eq!(
            frames,
            vec![
                frame(
                    Some(1618678132.831468),
                    r#"{"connectionID":18239578009413566319,"event":"systemStatus","status":"online","version":"1.8.3"}"#
                ),
                frame(
                    Some(1618678132.9348822),
                    r#"{"channelID":993,"channelName":"trade","event":"subscriptionStatus","pair":"XMR/USD","status":"subscribed","subscription":{"name":"trade"}}"#
                ),
                frame(Some(1618678133.5561652), r#"{"event":"heartbeat"}"#),
                frame(
                    Some(1618678142.592855),
                    r#"[993,[["354.11000000","0.89594024","1618678142.557535","s","l",""]],"trade","XMR/USD"]"#
                ),
                frame(
                    Some(1618678145.74465),
                    r#"[993,[["354.55000000","1.25690315","1618678145.715785","b","m",""]],"trade","XMR/USD"]"#
                ),
            ]
        );
    }

    #[test]
    fn recorder1_frame_text_is_not_mistaken_for_a_line_kind() {
        let text = "wss://x <-> 1.5\n2.5: {\"note\":\"a <-> 3 and b -> 4: c\"}\n";
        let (_, frames) = parse(text).expect("parses");
        assert_eq!(
            frames,
            vec![frame(Some(2.5), r#"{"note":"a <-> 3 and b -> 4: c"}"#)]
        );
    }

    #[test]
    fn recorder1_without_connect_line_is_still_recorder1() {
        let (format, frames) = parse("1.25: {\"a\":1}\n").expect("parses");
        assert_eq!(format, CaptureFormat::Recorder1);
        assert_eq!(frames, vec![frame(Some(1.25), r#"{"a":1}"#)]);
    }

    #[test]
    fn recorder1_malformed_line_names_file_and_line() {
        let text = "wss://x <-> 1.5\n2.5: {}\n\nthis is not a recorder line\n";
        let err = parse(text).expect_err("must fail");
        match &err {
            CaptureError::Parse { path, line, .. } => {
                assert_eq!(path, Path::new("fixture.txt"));
                assert_eq!(*line, 4);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("malformed capture line fixture.txt:4: ")
        );

        let err = parse("wss://x <-> 1.5\nwss://x <- soon: {}\n").expect_err("must fail");
        assert!(matches!(err, CaptureError::Parse { line: 2, .. }), "{err}");
    }

    #[test]
    fn recorder2_keeps_recv_data_verbatim() {
        let (format, frames) = parse(RECORDER2).expect("fixture parses");
        assert_eq!(format, CaptureFormat::Recorder2);
        assert_eq!(
            frames,
            vec![
                frame(
                    Some(1618678132.831468),
                    r#"{"connectionID":18239578009413566319,"event":"systemStatus","status":"online","version":"1.8.3"}"#
                ),
                frame(
                    Some(1633998288.39296),
                    r#"{"stream":"omgbusd@aggTrade","data":{"e":"aggTrade","E":1633998288468,"s":"OMGBUSD","a":425085,"p":"13.80480000","q":"2.10000000","f":439577,"l":439577,"T":1633998288467,"m":false,"M":true}}"#
                ),
            ]
        );
    }

    #[test]
    fn recorder2_malformed_recv_names_file_and_line() {
        let broken = format!("{}\n{{\"t\":\"recv\",\"ts\":1.0,\"data\":\"{{}}\"\n", {
            RECORDER2.lines().next().unwrap_or_default()
        });
        let err = parse(&broken).expect_err("truncated json must fail");
        assert!(matches!(err, CaptureError::Parse { line: 2, .. }), "{err}");

        let no_data = "{\"t\":\"header\"}\n{\"t\":\"recv\",\"ts\":1.0}\n";
        let err = parse(no_data).expect_err("recv without data must fail");
        assert!(matches!(err, CaptureError::Parse { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("data"), "{err}");

        let data_not_string = "{\"t\":\"recv\",\"ts\":1.0,\"data\":{\"a\":1}}\n";
        let err = parse(data_not_string).expect_err("non-string data must fail");
        assert!(matches!(err, CaptureError::Parse { line: 1, .. }), "{err}");
    }

    #[test]
    fn plain_keeps_each_line_without_timestamps() {
        let (format, frames) = parse(PLAIN).expect("fixture parses");
        assert_eq!(format, CaptureFormat::Plain);
        assert_eq!(
            frames,
            vec![
                frame(None, r#"{"e":"trade","s":"BTCUSDT","t":1}"#),
                frame(None, r#"{"e":"trade","s":"BTCUSDT","t":2}"#),
                frame(None, "not json is kept as is"),
            ]
        );
    }

    #[test]
    fn empty_file_is_plain_with_no_frames() {
        let (format, frames) = parse("\n# nothing here\n").expect("parses");
        assert_eq!(format, CaptureFormat::Plain);
        assert!(frames.is_empty());
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let err = parse_capture(Path::new("bad.txt"), b"{\"a\":1}\n\xff\xfe\n").expect_err("fails");
        assert!(matches!(err, CaptureError::Parse { line: 2, .. }), "{err}");
    }

    #[test]
    fn read_captures_concatenates_files_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = dir.path().join("KRAKEN.ws.48.0.txt");
        let two = dir.path().join("KRAKEN.jsonl");
        let three = dir.path().join("plain.txt");
        std::fs::write(&one, RECORDER1).expect("write");
        std::fs::write(&two, RECORDER2).expect("write");
        std::fs::write(&three, PLAIN).expect("write");

        let (format, _) = read_capture(&two).expect("reads");
        assert_eq!(format, CaptureFormat::Recorder2);

        let frames = read_captures(&[one, two, three]).expect("reads");
        assert_eq!(frames.len(), 5 + 2 + 3);
        assert_eq!(frames[0].ts, Some(1618678132.831468));
        assert_eq!(frames[5].ts, Some(1618678132.831468));
        assert_eq!(frames[9].data, "not json is kept as is");
    }

    fn zstd(text: &str) -> Vec<u8> {
        zstd::bulk::compress(text.as_bytes(), 3).expect("compresses")
    }

    #[test]
    fn compressed_files_read_frame_after_frame_even_across_lines() {
        // A line split between two zstd frames, as a foreign writer may do.
        let (first, second) = RECORDER2.split_at(RECORDER2.len() / 2);
        let mut bytes = zstd(first);
        bytes.extend(zstd(second));
        let report = parse_capture_report(Path::new("k.jsonl.zst"), &bytes).expect("reads");
        assert!(report.compressed);
        assert_eq!(report.truncated, None);
        assert_eq!(report.format, CaptureFormat::Recorder2);
        assert_eq!(report.frames, parse(RECORDER2).expect("parses").1);

        // Recorder format 1, compressed, is read too.
        let report = parse_capture_report(Path::new("k.txt.zst"), &zstd(RECORDER1)).expect("reads");
        assert_eq!(report.format, CaptureFormat::Recorder1);
        assert_eq!(report.frames.len(), 5);
    }

    #[test]
    fn a_cut_compressed_file_keeps_the_whole_lines_before_the_cut() {
        let mut bytes = zstd(RECORDER2);
        let whole = bytes.len();
        // More lines than one block holds, so that the cut frame's first
        // blocks still decode.
        let big: String = (0..20_000)
            .map(|i| format!("{{\"t\":\"recv\",\"ts\":{i}.5,\"data\":\"{{\\\"i\\\":{i}}}\"}}\n"))
            .collect();
        bytes.extend(zstd(&big));
        let cut = whole + (bytes.len() - whole) * 3 / 4;
        let report =
            parse_capture_report(Path::new("cut.jsonl.zst"), &bytes[..cut]).expect("reads");
        let truncated = report.truncated.expect("reported");
        assert_eq!(truncated.offset, whole as u64);
        assert_eq!(truncated.tail_bytes, (cut - whole) as u64);
        assert!(truncated.recovered_bytes > 0, "{truncated}");
        // The complete frame's two frames, then a run of the next one's.
        assert!(report.frames.len() > 2 && report.frames.len() < 2 + 20_000);
        for (i, f) in report.frames[2..].iter().enumerate() {
            assert_eq!(f.data, format!("{{\"i\":{i}}}"));
        }
    }

    #[test]
    fn binary_frames_are_skipped_and_counted() {
        let text = "{\"t\":\"header\",\"format\":2}\n\
            {\"t\":\"recv\",\"ts\":1.0,\"b64\":\"AAE=\"}\n\
            {\"t\":\"recv\",\"ts\":2.0,\"data\":\"x\"}\n\
            {\"t\":\"disconnect\",\"conn\":\"c\",\"ts\":3.0,\"reason\":\"bye\"}\n";
        let report = parse_capture_report(Path::new("b.jsonl"), text.as_bytes()).expect("reads");
        assert_eq!(report.binary_skipped, 1);
        assert_eq!(report.frames, vec![frame(Some(2.0), "x")]);
        assert!(!report.compressed);
    }

    #[test]
    fn a_corrupt_complete_frame_is_an_error_naming_its_offset() {
        let mut bytes = zstd(RECORDER2);
        let first = bytes.len();
        let mut second = zstd::bulk::Compressor::new(3).expect("compressor");
        second
            .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
            .expect("checksum");
        let mut second = second.compress(RECORDER1.as_bytes()).expect("compresses");
        let last = second.len() - 1;
        second[last] ^= 0xff;
        bytes.extend(second);
        let err = parse_capture_report(Path::new("bad.jsonl.zst"), &bytes).expect_err("corrupt");
        assert!(
            matches!(err, CaptureError::Zstd { offset, .. } if offset == first as u64),
            "{err}"
        );
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.jsonl");
        let err = read_capture(&missing).expect_err("fails");
        assert!(matches!(err, CaptureError::Io { .. }));
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
    }
}
