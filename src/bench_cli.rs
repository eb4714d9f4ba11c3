//! `ticklake bench`: which measurement its flags ask for, run and printed.

use std::path::PathBuf;

use ticklake::config::Config;
use ticklake::tools::bench::{self, ProbeCommand};

use crate::{BenchFrom, actix_system, print_report};

/// The verb's flags.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "TICKLAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the trades enter: `feed`, the whole path from generated
    /// WebSocket frames through the feed actor; or `lanes`, trades built
    /// before the clock starts and sent into the producer's lanes.
    #[arg(long, value_enum, default_value_t = BenchFrom::Feed)]
    pub from: BenchFrom,
    /// Number of trades per measurement (default: 1,000,000 from the
    /// feed, 200,000 from the lanes).
    #[arg(long)]
    pub trades: Option<usize>,
    /// Symbols the generated frames spread over (`--from feed`).
    #[arg(long, default_value_t = 50)]
    pub symbols: usize,
    /// Frames a second the server plays (`--from feed`); without it, as
    /// fast as the feed reads them.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Internal: one paced run of the NORMAL search (`--from feed`, with
    /// `--rate`), its report as JSON on stdout, for the search of the
    /// `ticklake bench` that started it. Not for use by hand.
    #[arg(long, hide = true, requires = "rate")]
    pub probe: bool,
}

pub fn bench(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rate.is_none_or(|r| r > 0.0 && r.is_finite()),
        "--rate must be a positive number of frames a second"
    );
    let cfg = Config::load(a.config.as_deref())?;
    let sys = actix_system();
    let timeout = std::time::Duration::from_secs(600);
    let (symbols, rate) = (a.symbols, a.rate);
    match a.from {
        BenchFrom::Feed if a.probe => {
            let n = a.trades.unwrap_or(500_000);
            let rate = rate.unwrap_or_default();
            let report =
                sys.block_on(async move { bench::probe(&cfg, n, symbols, rate, timeout).await })?;
            print_report(&report, true)
        }
        BenchFrom::Feed => {
            let n = a.trades.unwrap_or(1_000_000);
            // Each paced run of the search in a fresh process of this same
            // executable (`ProbeCommand`).
            let probes = ProbeCommand {
                exe: std::env::current_exe()?,
                config: a.config,
            };
            let report = sys.block_on(async move {
                bench::run_full(&cfg, n, symbols, rate, timeout, &probes).await
            })?;
            print_report(&report, a.json)
        }
        BenchFrom::Lanes => {
            let n = a.trades.unwrap_or(200_000);
            let report = sys.block_on(async move { bench::run(&cfg, n, timeout).await })?;
            print_report(&report, a.json)
        }
    }
}
