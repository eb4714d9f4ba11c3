//! The daemon under test: a child process (`ticklake run`) on a generated
//! config, so that it can be SIGKILLed and started again on the same data
//! directory, and the HTTP calls the orchestrator makes to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ChaosError;

/// The config of the daemon under test. The thresholds are the defaults'
/// shape scaled to a run of a few minutes: a backlog of seconds, not of
/// hours, must move the level, and levels may change every 2 s.
pub fn config_text(
    data_dir: &Path,
    http_port: u16,
    ws: &str,
    rest: &str,
    symbols: &[String],
    brokers: Option<&str>,
    store_delay_us: u64,
) -> String {
    let syms: Vec<String> = symbols.iter().map(|s| format!("{s:?}")).collect();
    let kafka = match brokers {
        Some(b) => format!(
            "brokers = {b:?}\ntrades_topic_prefix = \"chaos{port}.trades\"\ndead_letter_topic = \"chaos{port}.dead_letters\"\n",
            port = http_port
        ),
        None => String::new(),
    };
    format!(
        r#"# Written by `ticklake chaos` for the daemon it runs and breaks.
data_dir = {data:?}

[kafka]
{kafka}
[feeds.binance]
url = "ws://{ws}"
rest_url = "http://{rest}"
symbols = [{syms}]
channels = ["trade"]
backoff_initial_ms = 100
backoff_max_ms = 1000
rest_requests_per_sec = 50
gap_grace_ms = 1000

[writer]
max_rows = 5000
max_age_ms = 1000

[degradation]
sample_ms = 200
cooldown_ms = 2000
raise_after_ms = 400

[degradation.thresholds]
consumer_lag = [5000.0, 15000.0, 40000.0, 10000000.0]
lane_depth = [0.5, 0.7, 0.85, 0.95]
producer_queue = [5000.0, 15000.0, 40000.0, 10000000.0]
commit_latency_ms = [4000.0, 10000.0, 30000.0, 60000.0]

[http]
listen = "127.0.0.1:{http_port}"

[chaos]
admin = true
writer_delay_us_per_row = {store_delay_us}
"#,
        data = data_dir.display().to_string(),
        syms = syms.join(", "),
    )
}

/// A free loopback port for the daemon's HTTP endpoints. Another process
/// could take it before the daemon binds it; the daemon then fails to
/// start, which `Daemon::wait_ready` reports. portpicker tries ports below
/// the kernel's ephemeral range first: a port the kernel handed out for
/// `bind(0)` and that was released is the next outgoing connection's
/// likely local port, while those below the range are never given out.
pub fn free_port() -> Result<u16, ChaosError> {
    portpicker::pick_unused_port().ok_or_else(|| ChaosError::Io {
        what: "finding a free port",
        source: std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "no free TCP and UDP port found",
        ),
    })
}

/// The daemon child and where it answers.
pub struct Daemon {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    pub base: String,
    pub listen: String,
    /// How many times it was started.
    pub runs: u32,
}

impl Daemon {
    pub fn new(config: PathBuf, log: PathBuf, listen: String) -> Self {
        Self {
            child: None,
            config,
            log,
            base: format!("http://{listen}"),
            listen,
            runs: 0,
        }
    }

    /// Starts `ticklake run --config …` with its log appended to the log file.
    pub fn spawn(&mut self) -> Result<(), ChaosError> {
        let io = |what| move |source| ChaosError::Io { what, source };
        let exe = std::env::current_exe().map_err(io("finding the ticklake binary"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io("opening the daemon log"))?;
        let err = log.try_clone().map_err(io("opening the daemon log"))?;
        let mut cmd = Command::new(exe);
        // The daemon dies with the orchestrator, however that ends (a
        // killed `ticklake chaos` must not leave a daemon on the data dir).
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: prctl only, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env_remove("TICKLAKE_CONFIG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io("starting the daemon"))?;
        self.child = Some(child);
        self.runs += 1;
        Ok(())
    }

    /// Waits until `/status` answers and the venue has a client (the
    /// feed's own `connected` waits for a first frame, which a paused venue
    /// does not send).
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        venue_connected: &std::sync::atomic::AtomicBool,
    ) -> Result<Value, ChaosError> {
        let start = Instant::now();
        loop {
            if let Some(c) = &mut self.child
                && let Ok(Some(code)) = c.try_wait()
            {
                return Err(ChaosError::Daemon(format!(
                    "the daemon exited at start ({code}); see {}",
                    self.log.display()
                )));
            }
            if let Some(s) = self.status()
                && venue_connected.load(std::sync::atomic::Ordering::Relaxed)
            {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                return Err(ChaosError::Daemon(format!(
                    "the daemon was not ready within {timeout:?}; see {}",
                    self.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL: no shutdown, no flush, as a crash or the OOM killer.
    pub fn kill9(&mut self) -> Result<(), ChaosError> {
        if let Some(mut c) = self.child.take() {
            c.kill().map_err(|source| ChaosError::Io {
                what: "killing the daemon",
                source,
            })?;
            let _ = c.wait();
        }
        Ok(())
    }

    /// SIGTERM and wait for the graceful stop (SIGKILL after `timeout`).
    pub fn stop(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        if let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: a signal to our own child, whose pid we hold unreaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(code)) = c.try_wait() {
                return Some(code);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    fn get(&self, path: &str) -> Option<Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .into();
        agent
            .get(format!("{}{path}", self.base))
            .call()
            .ok()?
            .body_mut()
            .read_json()
            .ok()
    }

    pub fn status(&self) -> Option<Value> {
        self.get("/status")
    }

    /// A `/chaos/*` fault; the daemon's refusal is an error naming it.
    pub fn inject(&self, path_and_query: &str) -> Result<(), ChaosError> {
        let url = format!("{}/chaos/{path_and_query}", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut res = agent
            .post(&url)
            .send_empty()
            .map_err(|e| ChaosError::Daemon(format!("POST {url}: {e}")))?;
        if res.status().is_success() {
            Ok(())
        } else {
            let body = res.body_mut().read_to_string().unwrap_or_default();
            Err(ChaosError::Daemon(format!(
                "POST {url}: {}: {body}",
                res.status()
            )))
        }
    }

    /// Runs one SQL statement through the daemon's query API.
    pub fn sql(&self, sql: &str) -> Result<Vec<Value>, ChaosError> {
        let answer = crate::api::client::sql(&self.listen, sql, Duration::from_secs(60))
            .map_err(|e| ChaosError::Daemon(format!("query {sql:?}: {e}")))?
            .ok_or_else(|| ChaosError::Daemon(format!("no query API at {}", self.listen)))?;
        Ok(answer["rows"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Never leave a daemon behind holding the data directory.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
