//! `ticklake record` against `ticklake replay`: the recording holds exactly
//! the frames the replay played, in order, across rotated files; a cut
//! recording still reads; and `replay --serve` runs several servers.
//!
//! `TICKLAKE_TEST_RECORD_SECS` sets how long each recording runs (default 8;
//! the long form is 30). Timeouts here only bound hangs: nothing about speed
//! is asserted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ticklake::tools::capture::{CaptureFormat, read_capture_report};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ticklake")
}

/// The recorded captures shipped beside the repository.
fn capture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/captures")
        .join(name);
    assert!(p.exists(), "missing capture fixture {}", p.display());
    p
}

fn record_secs() -> u64 {
    std::env::var("TICKLAKE_TEST_RECORD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Received frames of a recorder-format-1 capture, read here by hand so the
/// ground truth does not come from ticklake's own capture reader.
fn received_frames(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (ts, rest) = l.split_once(": ")?;
            ts.parse::<f64>().ok()?;
            Some(rest.to_string())
        })
        .collect()
}

/// A child process that is killed when dropped.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ticklake replay ARGS`; returns the process and the first `lines`
/// lines it printed.
fn start_replay(args: &[&str], lines: usize) -> (Proc, Vec<String>) {
    let mut child = Command::new(bin())
        .arg("replay")
        .args(args)
        .env("TICKLAKE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc { child };
    let mut reader = BufReader::new(stdout);
    let mut banners = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("replay listening on ws://"),
            "unexpected replay banner {line:?}"
        );
        banners.push(line.trim_end().to_string());
    }
    (proc, banners)
}

/// The ws:// URL of a banner line.
fn banner_url(line: &str) -> String {
    let rest = line.strip_prefix("replay listening on ").unwrap();
    rest.split(" for ").next().unwrap().to_string()
}

/// Connects a WebSocket client and collects every text frame until the
/// server closes.
fn collect_text_frames(url: &str) -> Vec<String> {
    use futures::StreamExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("connects in time")
        .unwrap();
        let mut got = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), ws.next())
                .await
                .expect("the replay does not hang");
            match next {
                Some(Ok(m)) if m.is_text() => got.push(m.into_text().unwrap().to_string()),
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        got
    })
}

/// One recording of the Binance capture through `ticklake replay`.
struct Recording {
    dir: tempfile::TempDir,
    /// The capture's received frames, read by hand.
    expected: Vec<String>,
    /// The summary line `record` printed.
    summary: serde_json::Value,
}

impl Recording {
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// The recorded files, ordered by the `seq` of their headers.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.out())
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (header(&p)["seq"].as_u64().unwrap(), p))
            .collect();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }
}

/// The decompressed lines of a recorded file.
fn lines(path: &Path) -> Vec<serde_json::Value> {
    let bytes = std::fs::read(path).unwrap();
    let text = zstd::stream::decode_all(&bytes[..]).unwrap();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn header(path: &Path) -> serde_json::Value {
    lines(path).into_iter().next().expect("a header line")
}

/// Replays the Binance capture at 2000 frames/s and records it with
/// `extra` options for `TICKLAKE_TEST_RECORD_SECS`.
fn record_capture(extra: &[&str]) -> Recording {
    let cap = capture("BINANCE-ee25be.0.txt");
    let expected = received_frames(&cap);
    assert!(expected.len() > 4000, "{}", expected.len());
    let (_replay, banners) = start_replay(
        &[
            "--capture",
            cap.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--rate",
            "2000",
        ],
        1,
    );
    let url = banner_url(&banners[0]);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("record.toml");
    // One connection for the whole run: at the end of the capture the
    // replay closes, and a reconnect would be served the capture again.
    std::fs::write(
        &config,
        format!(
            r#"[feeds.binance]
url = "{url}"
channels = ["aggTrade"]
symbols = ["btcusdt", "ethusdt", "dotusdt"]
backoff_initial_ms = 600000
backoff_max_ms = 600000
stale_after_secs = 600
"#
        ),
    )
    .unwrap();
    let secs = record_secs();
    let started = Instant::now();
    let out = Command::new(bin())
        .args(["record", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(["--duration", &format!("{secs}s")])
        .args(extra)
        .env("TICKLAKE_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "record failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summaries: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(summaries.len(), 1, "{stdout}");
    println!(
        "record {extra:?} for {secs}s ({:.1}s): {}",
        started.elapsed().as_secs_f64(),
        summaries[0]
    );
    Recording {
        dir,
        expected,
        summary: summaries[0].clone(),
    }
}

/// Every file's frames through the capture reader, in `seq` order, and
/// what each file's lines hold.
fn check_recording(rec: &Recording) -> Vec<PathBuf> {
    let files = rec.files();
    assert!(!files.is_empty());
    let mut frames = Vec::new();
    let mut connects = 0;
    let mut recv_ts = Vec::new();
    for (seq, path) in files.iter().enumerate() {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("BINANCE.") && name.ends_with(".jsonl.zst"),
            "{name}"
        );
        let lines = lines(path);
        let h = &lines[0];
        assert_eq!(h["t"], "header", "{name} starts with its header");
        assert_eq!(h["format"], 2);
        assert_eq!(h["exchange"], "BINANCE");
        assert_eq!(h["feed"], "binance");
        assert_eq!(h["seq"], seq as u64);
        assert!(h["recorded"].as_f64().unwrap() > 1.6e9);
        assert!(lines[1..].iter().all(|l| l["t"] != "header"));
        connects += lines.iter().filter(|l| l["t"] == "connect").count();
        recv_ts.extend(
            lines
                .iter()
                .filter(|l| l["t"] == "recv")
                .map(|l| l["ts"].as_f64().unwrap()),
        );

        let report = read_capture_report(path).unwrap();
        assert_eq!(report.format, CaptureFormat::Recorder2);
        assert!(report.compressed);
        assert!(report.truncated.is_none(), "{name}: {:?}", report.truncated);
        assert_eq!(report.binary_skipped, 0);
        frames.extend(report.frames);
    }
    assert_eq!(connects, 1, "one connection for the whole run");
    assert!(
        recv_ts.windows(2).all(|w| w[0] <= w[1]),
        "receive times go back"
    );
    assert_eq!(frames.len(), rec.expected.len(), "frame count");
    for (i, (got, want)) in frames.iter().zip(&rec.expected).enumerate() {
        assert_eq!(&got.data, want, "frame {i}");
    }
    assert!(frames.iter().zip(&recv_ts).all(|(f, ts)| f.ts == Some(*ts)));
    let s = &rec.summary;
    assert_eq!(s["feed"], "binance");
    assert_eq!(s["frames"], rec.expected.len() as u64);
    assert_eq!(s["connects"], 1);
    assert_eq!(s["files"], files.len() as u64);
    assert!(s["error"].is_null(), "{s}");
    files
}

#[test]
fn record_holds_exactly_the_replayed_frames_in_order() {
    let rec = record_capture(&[]);
    let files = check_recording(&rec);
    assert_eq!(files.len(), 1);
    println!(
        "{} frames in 1 file, {} bytes on disk",
        rec.expected.len(),
        std::fs::metadata(&files[0]).unwrap().len()
    );
}

#[test]
fn record_rotates_into_files_that_each_start_with_a_header() {
    let rec = record_capture(&["--rotate-bytes", "200000"]);
    let files = check_recording(&rec);
    assert!(files.len() >= 3, "{} files", files.len());
    println!(
        "{} frames in {} files of at most 200000 bytes uncompressed (plus one line)",
        rec.expected.len(),
        files.len()
    );
}

#[test]
fn a_truncated_recording_reads_every_complete_frame_and_says_so() {
    // Short zstd frames, so that the cut loses little.
    let rec = record_capture(&["--flush-ms", "100"]);
    let files = check_recording(&rec);
    let last = files.last().unwrap();
    let whole = std::fs::read(last).unwrap();
    // The zstd frames of the file, by hand.
    let mut frames = Vec::new();
    let mut at = 0;
    while at < whole.len() {
        let n = zstd::zstd_safe::find_frame_compressed_size(&whole[at..]).unwrap();
        frames.push(at..at + n);
        at += n;
    }
    assert!(frames.len() >= 2, "{} zstd frames", frames.len());
    let recv_lines = |bytes: &[u8]| {
        String::from_utf8(zstd::stream::decode_all(bytes).unwrap())
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(r#"{"t":"recv""#))
            .count()
    };
    // The cut goes into the last zstd frame that holds a received frame:
    // the very last one may hold none (only what the recorder writes when
    // it stops), and a cut there would lose nothing to show.
    let final_frame = frames
        .iter()
        .rev()
        .find(|f| recv_lines(&whole[(*f).clone()]) > 0)
        .expect("a zstd frame with received frames")
        .clone();
    let cut = final_frame.start + (final_frame.end - final_frame.start) / 2;
    let complete_recv = recv_lines(&whole[..final_frame.start]);

    let cut_file = rec.dir.path().join("cut.jsonl.zst");
    std::fs::write(&cut_file, &whole[..cut]).unwrap();
    let report = read_capture_report(&cut_file).expect("a cut file still reads");
    let truncated = report.truncated.expect("the cut is reported");
    assert_eq!(truncated.offset, final_frame.start as u64);
    assert_eq!(truncated.tail_bytes, (cut - final_frame.start) as u64);
    println!(
        "cut {} of {} bytes: {} frames read ({} in complete zstd frames); {truncated}",
        whole.len() - cut,
        whole.len(),
        report.frames.len(),
        complete_recv
    );
    assert!(report.frames.len() >= complete_recv);
    // The frames before the cut, in order, from the frames this file holds.
    let before: usize = files[..files.len() - 1]
        .iter()
        .map(|p| read_capture_report(p).unwrap().frames.len())
        .sum();
    let whole_file = read_capture_report(last).unwrap().frames;
    assert!(report.frames.len() < whole_file.len());
    for (i, (got, want)) in report.frames.iter().zip(&whole_file).enumerate() {
        assert_eq!(got, want, "frame {i}");
        assert_eq!(&got.data, &rec.expected[before + i]);
    }
    // The simple reader tolerates it too, and so does replay.
    let (_, frames) = ticklake::tools::capture::read_capture(&cut_file).unwrap();
    assert_eq!(frames.len(), report.frames.len());
    // A cut inside the header of the final frame reads as well.
    std::fs::write(&cut_file, &whole[..final_frame.start + 2]).unwrap();
    let report = read_capture_report(&cut_file).unwrap();
    assert!(report.truncated.is_some());
    assert_eq!(report.frames.len(), complete_recv);
}

#[test]
fn replay_serves_several_captures_each_on_its_own_port() {
    let binance = capture("BINANCE-ee25be.0.txt");
    let binance_us = capture("BINANCE_US.ws.1.0.txt");
    let (_replay, banners) = start_replay(
        &[
            "--capture",
            binance_us.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--serve",
            &format!("127.0.0.1:0={}", binance.display()),
            "--serve",
            &format!("127.0.0.1:0={}", binance_us.display()),
        ],
        3,
    );
    println!("{}", banners.join("\n"));
    // --listen's line is unchanged; each --serve line names its files.
    assert!(!banners[0].contains(" for "), "{}", banners[0]);
    assert!(
        banners[1].ends_with(&format!(" for {}", binance.display())),
        "{}",
        banners[1]
    );
    assert!(
        banners[2].ends_with(&format!(" for {}", binance_us.display())),
        "{}",
        banners[2]
    );
    let urls: Vec<String> = banners.iter().map(|b| banner_url(b)).collect();
    assert_eq!(
        urls.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "three ports: {urls:?}"
    );
    let want_binance = received_frames(&binance);
    let want_us = received_frames(&binance_us);
    // Both at once, from two clients.
    let (got_binance, got_us) = std::thread::scope(|s| {
        let a = s
            .spawn(|| collect_text_frames(&format!("{}/stream?streams=btcusdt@aggTrade", urls[1])));
        let b = s.spawn(|| collect_text_frames(&urls[2]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(got_binance.len(), want_binance.len());
    assert_eq!(got_binance, want_binance);
    assert_eq!(got_us, want_us);
    assert_eq!(collect_text_frames(&urls[0]), want_us);
    println!(
        "served {} and {} frames on two ports, {} on --listen",
        got_binance.len(),
        got_us.len(),
        want_us.len()
    );
}

/// `ticklake record` on a looping replay of the BINANCE_US capture, with no
/// `--duration`: the process and its output directory, once a first zstd
/// frame is on disk.
fn start_looping_recording(dir: &Path) -> (Proc, Proc, Vec<String>) {
    let cap = capture("BINANCE_US.ws.1.0.txt");
    let expected = received_frames(&cap);
    let (replay, banners) = start_replay(
        &[
            "--capture",
            cap.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--rate",
            "2000",
            "--loop",
        ],
        1,
    );
    let url = banner_url(&banners[0]);
    let config = dir.join("record.toml");
    std::fs::write(
        &config,
        format!(
            "[feeds.binance_us]\nurl = \"{url}\"\nchannels = [\"aggTrade\"]\nsymbols = [\"compusdt\"]\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["record", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(dir.join("out"))
        .env("TICKLAKE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let recorder = Proc { child };
    let started = Instant::now();
    loop {
        let written = std::fs::read_dir(dir.join("out"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .any(|m| m.len() > 0)
            })
            .unwrap_or(false);
        if written {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing recorded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (recorder, replay, expected)
}

/// The only file of a looping recording: its frames follow the capture
/// over and over.
fn looped_frames(dir: &Path, expected: &[String]) -> ticklake::tools::capture::CaptureReport {
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("BINANCE_US.")
    );
    let report = read_capture_report(&files[0]).expect("the recording reads");
    assert!(!report.frames.is_empty());
    for (i, f) in report.frames.iter().enumerate() {
        assert_eq!(f.data, expected[i % expected.len()], "frame {i}");
    }
    report
}

#[test]
fn record_stops_on_sigterm_and_finishes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut recorder, _replay, expected) = start_looping_recording(dir.path());
    let pid = recorder.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = recorder.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "record did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut recorder.child.stdout.take().unwrap(), &mut stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let report = looped_frames(dir.path(), &expected);
    assert!(report.truncated.is_none(), "{:?}", report.truncated);
    assert_eq!(summary["feed"], "binance_us");
    assert_eq!(summary["frames"], report.frames.len() as u64);
    println!(
        "SIGTERM: {} frames recorded, summary {summary}",
        report.frames.len()
    );
}

#[test]
fn a_killed_recorder_leaves_a_readable_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut recorder, _replay, expected) = start_looping_recording(dir.path());
    // Let it write a few more frames, then SIGKILL: no shutdown path runs.
    std::thread::sleep(Duration::from_millis(1500));
    recorder.child.kill().unwrap();
    recorder.child.wait().unwrap();
    let report = looped_frames(dir.path(), &expected);
    println!(
        "SIGKILL: {} frames readable, truncated: {:?}",
        report.frames.len(),
        report.truncated.map(|t| t.to_string())
    );
}
