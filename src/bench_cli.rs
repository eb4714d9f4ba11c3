//! `ticklake bench`: which measurement its flags ask for, run and printed.

use std::path::PathBuf;

use ticklake::config::Config;
use ticklake::tools::bench::{self, ProbeCommand};

use crate::{BenchFrom, actix_system, print_report};

/// The verb's flags, as `Command::Bench` holds them.
pub struct Args {
    pub config: Option<PathBuf>,
    pub from: BenchFrom,
    pub trades: Option<usize>,
    pub symbols: usize,
    pub rate: Option<f64>,
    pub json: bool,
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
