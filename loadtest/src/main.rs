//! `ringsocks-load` command line; see `ringsocks-load --help`.

use std::process::ExitCode;

use clap::Parser;
use ringsocks_load::{emit, run, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    let report = match run(args.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringsocks-load: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = emit(&report, &args, &mut std::io::stdout().lock()) {
        eprintln!("ringsocks-load: {e}");
        return ExitCode::from(2);
    }
    let failing = report.failing(args.max_error_rate);
    if !failing.is_empty() {
        for r in failing {
            eprintln!(
                "ringsocks-load: {} ({}): error rate {:.3}% exceeds --max-error-rate {:.3}%",
                r.name,
                r.proxy,
                r.error_rate * 100.0,
                args.max_error_rate * 100.0
            );
        }
        return ExitCode::from(1);
    }
    if report.interrupted {
        return ExitCode::from(130);
    }
    ExitCode::SUCCESS
}
