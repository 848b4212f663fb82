//! `streamline-bench`: a fio-style harness for the WAL and its baselines.
//!
//! A run is one or more jobs ([`job`]); each opens an engine ([`engine`]) in its own
//! directory, drives it from writer threads ([`run`]) and produces a report
//! ([`report`]): a table or one JSON object per job, optionally an `.hgrm`
//! percentile file per job and one SVG chart of every job's latency curve ([`plot`]).
//! Everything is validated before any file is created. `docs/benchmarks.md` documents
//! the fields and the measured results.

pub mod engine;
pub mod job;
pub mod plot;
pub mod report;
pub mod run;
pub mod sys;

use std::{
    io::Write,
    path::{Path, PathBuf},
};

pub use job::{Cli, EngineKind, JobArgs, JobSpec, OutputFormat, RecordSize};
pub use report::JobReport;
pub use run::{run_job, JobResult};

/// Path of job `index`'s histogram file: `path` itself for a single job, otherwise
/// `stem-N.ext`.
pub fn hist_path(path: &Path, index: usize, jobs: usize) -> PathBuf {
    if jobs <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hist".into());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index}"),
    };
    path.with_file_name(name)
}

/// Whether `path` can be written, tried without changing it: opened to
/// append (created when missing, then removed again).
fn writable(path: &Path) -> std::io::Result<()> {
    let existed = path.symlink_metadata().is_ok();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    if !existed {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// A short label for a job in charts and progress lines.
pub fn job_label(r: &JobReport) -> String {
    let mut l = format!("{} {}", r.job, r.engine);
    if r.engine == "streamline" {
        let _ = write!(l, "/{} {}", r.backend, r.sync_mode);
    }
    let size = match &r.record_size {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let _ = write!(l, " w{} qd{} {size}B", r.writers, r.queue_depth);
    l
}

use std::fmt::Write as _;

/// Runs every job of `cli`: prints reports to `out` as each job finishes, progress to
/// `err`, and writes the histogram and plot files. Returns the reports.
///
/// # Errors
/// Invalid options (before any file is created) or the first failed job, as text.
pub fn run_cli(
    cli: &Cli,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Vec<JobReport>, String> {
    let jobs = cli.resolve_jobs()?;
    // The output files' directories, before any job runs: a missing one found
    // after the first job stopped the run there, the later jobs not run.
    for (flag, path) in [("--hist-file", &cli.hist_file), ("--plot", &cli.plot)] {
        if let Some(path) = path {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if !dir.is_dir() {
                return Err(format!(
                    "{flag} {}: the directory {} does not exist",
                    path.display(),
                    dir.display()
                ));
            }
        }
    }
    // Each output file can be written (not a directory, nor in one the user
    // cannot write): found after the first job, it stopped the run there.
    let mut outputs = Vec::new();
    if let Some(path) = &cli.hist_file {
        outputs.extend((1..=jobs.len()).map(|i| ("--hist-file", hist_path(path, i, jobs.len()))));
    }
    if let Some(path) = &cli.plot {
        outputs.push(("--plot", path.clone()));
    }
    for (flag, path) in outputs {
        writable(&path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    }
    let mut reports = Vec::with_capacity(jobs.len());
    let mut hists = Vec::with_capacity(jobs.len());
    for (i, spec) in jobs.iter().enumerate() {
        let index = i + 1;
        let progress: Option<&mut dyn Write> = if cli.quiet { None } else { Some(&mut *err) };
        let result = run_job(index, spec, progress)?;
        let report = JobReport::from_result(&result);
        if cli.output_format == OutputFormat::Json {
            writeln!(out, "{}", report.to_json_line())
                .map_err(|e| format!("writing the report: {e}"))?;
            let _ = out.flush();
        }
        if let Some(path) = &cli.hist_file {
            let p = hist_path(path, index, jobs.len());
            std::fs::write(&p, report::hgrm(&result.hist))
                .map_err(|e| format!("--hist-file {}: {e}", p.display()))?;
        }
        if cli.cleanup {
            std::fs::remove_dir_all(&result.dir)
                .map_err(|e| format!("--cleanup {}: {e}", result.dir.display()))?;
        }
        hists.push((job_label(&report), result.hist));
        reports.push(report);
    }
    if cli.output_format == OutputFormat::Table {
        write!(out, "{}", report::table(&reports))
            .map_err(|e| format!("writing the report: {e}"))?;
    }
    if let Some(path) = &cli.plot {
        let series: Vec<(String, &hdrhistogram::Histogram<u64>)> =
            hists.iter().map(|(l, h)| (l.clone(), h)).collect();
        std::fs::write(path, plot::svg("latency per acknowledged append", &series))
            .map_err(|e| format!("--plot {}: {e}", path.display()))?;
    }
    Ok(reports)
}
