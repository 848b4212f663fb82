//! `streamline-bench`: fio-style benchmark of the WAL and its baselines.
//! See `docs/benchmarks.md` and `streamline-bench --help`.

use clap::Parser;

fn main() {
    let cli = streamline::bench::Cli::parse();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr();
    if let Err(e) = streamline::bench::run_cli(&cli, &mut out, &mut err) {
        eprintln!("streamline-bench: {e}");
        std::process::exit(2);
    }
}
