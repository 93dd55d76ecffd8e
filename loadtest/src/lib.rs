//! `ringsocks-load`: a load generator for SOCKS4/4a/5/6 proxies.
//!
//! The binary is a thin wrapper around [`run`], which tests drive in-process. See the crate's
//! README.md for usage and for the benchmark report made with it.

pub mod cli;
pub mod error;
pub mod proc;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod socks;
pub mod stats;
pub mod target;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use cli::{Args, Scenario};
pub use error::LoadError;
pub use report::{Report, RunResult};
pub use runner::run;

/// Print the report (tables or JSON lines) to `out` and write the `--hgrm` / `--plot` files.
pub fn emit(report: &Report, args: &Args, out: &mut dyn Write) -> Result<(), LoadError> {
    let w = |e| LoadError::io("write report", e);
    if let Some(path) = &args.json_file {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| LoadError::io(format!("open {}", path.display()), e))?;
        write_json(report, &mut f)?;
    }
    if args.json {
        write_json(report, out)?;
    } else {
        for r in &report.runs {
            writeln!(out, "{}", report::render_run(r)).map_err(w)?;
        }
        if let Some(c) = &report.compare {
            writeln!(out, "{}", report::render_compare(c)).map_err(w)?;
        }
    }
    let summary = report
        .compare
        .clone()
        .or_else(|| report::summarize(&report.runs));
    if let (Some(path), Some(s)) = (&args.hgrm, &summary) {
        let single = s.rows.len() == 1;
        for row in &s.rows {
            let p = if single {
                path.clone()
            } else {
                with_suffix(path, &row.name)
            };
            write_file(&p, &report::hgrm(&row.hist_iteration))?;
            write_file(
                &with_suffix(&p, "handshake"),
                &report::hgrm(&row.hist_handshake),
            )?;
            if !row.hist_ttfb.is_empty() {
                write_file(&with_suffix(&p, "ttfb"), &report::hgrm(&row.hist_ttfb))?;
            }
        }
    }
    if let (Some(path), Some(s)) = (&args.plot, &summary) {
        let title = format!(
            "ringsocks-load {:?}: concurrency {}{}",
            args.scenario,
            args.concurrency,
            args.rate.map_or(String::new(), |r| format!(", rate {r}/s"))
        );
        write_file(path, &report::svg(s, &title))?;
    }
    Ok(())
}

/// One JSON object per run, then the compare summary if any.
pub fn write_json(report: &Report, out: &mut dyn Write) -> Result<(), LoadError> {
    let json = |e: serde_json::Error| LoadError::Config(format!("JSON encoding: {e}"));
    for r in &report.runs {
        let line = serde_json::to_string(r).map_err(json)?;
        writeln!(out, "{line}").map_err(|e| LoadError::io("write JSON", e))?;
    }
    if let Some(c) = &report.compare {
        let line = serde_json::to_string(c).map_err(json)?;
        writeln!(out, "{line}").map_err(|e| LoadError::io("write JSON", e))?;
    }
    Ok(())
}

/// `out.hgrm` + `dante` -> `out.dante.hgrm`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let clean: String = suffix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match (path.file_stem(), path.extension()) {
        (Some(stem), Some(ext)) => path.with_file_name(format!(
            "{}.{clean}.{}",
            stem.to_string_lossy(),
            ext.to_string_lossy()
        )),
        _ => PathBuf::from(format!("{}.{clean}", path.display())),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), LoadError> {
    std::fs::write(path, text).map_err(|e| LoadError::io(format!("write {}", path.display()), e))
}
