//! `ringsocks`: command line -> [`Config`] -> [`ringsocks::server::run`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringsocks::config::{Config, ServeArgs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core io_uring SOCKS4/4a/5 proxy server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the proxy (defaults: 127.0.0.1:1080, no auth, one worker per CPU).
    Serve(ServeArgs),
    /// Check a TOML config file (with any flags given, as `serve` would resolve them) and
    /// print what it configures, or the first error with its line; exit 2 on an error.
    CheckConfig {
        /// The config file.
        file: std::path::PathBuf,
        /// Flags as for `serve`, which win over the file.
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Hash a password (argon2id) and write USER's entry in a users file (or print it).
    Passwd(ringsocks::passwd::PasswdArgs),
    /// Check what limits concurrent tunnels on this host, and how to raise it.
    Doctor(ringsocks::doctor::DoctorArgs),
}

/// mimalloc v2's `mi_option_arena_eager_commit` (its `mi_option_t` enum; libmimalloc-sys does
/// not name it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Runs from `.init_array`, before the Rust runtime's first allocation creates mimalloc's arena:
/// commit arena memory as it is used rather than eagerly. With eager commit, memory that a burst
/// of tunnels used stays resident after they close (measured with 9000 tunnels: 24 MiB after
/// against 18 MiB before, and 3.9 KiB per tunnel; lazily committed: 11 against 10, and 2.1 KiB
/// per tunnel). An operator's own `MIMALLOC_ARENA_EAGER_COMMIT` still wins.
extern "C" fn tune_allocator() {
    // Safety: getenv with a NUL-terminated literal; mi_option_set before any thread exists
    // (it is not thread safe) and before mimalloc reads the option.
    unsafe {
        if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
}

#[used]
#[link_section = ".init_array"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve(args) => serve(&args),
        Cmd::CheckConfig { file, mut args } => {
            args.config = Some(file);
            check_config(&args)
        }
        Cmd::Doctor(args) => ringsocks::doctor::run(&args),
        Cmd::Passwd(args) => match ringsocks::passwd::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringsocks passwd: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn check_config(args: &ServeArgs) -> ExitCode {
    match Config::from_args(args) {
        Ok(c) => {
            let join = |v: &[std::net::SocketAddr]| {
                let v: Vec<String> = v.iter().map(|a| a.to_string()).collect();
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    v.join(", ")
                }
            };
            println!(
                "ok: listen {}; PROXY protocol listen {}; {} user(s); {} access rule(s), default {:?}; relay {:?}; runtime {:?}; metrics {}; bandwidth per user {} B/s ({} override(s))",
                join(&c.listen),
                join(&c.proxy_listen),
                c.users.len(),
                c.rules.len(),
                c.rules.default_action(),
                c.relay,
                c.runtime,
                c.metrics.map_or("-".to_owned(), |a| a.to_string()),
                c.bandwidth.0,
                c.bandwidth.1.len(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringsocks: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringsocks: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Log lines are written by a dedicated thread: a worker never blocks on a slow stderr
    // (a full pipe to journald, a paused terminal). If that thread falls more than 128k lines
    // behind, lines are dropped rather than stalling tunnels.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Panics go to the log like everything else (a panic in a tunnel's task ends only that
    // tunnel; the worker goes on).
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        tracing::error!(thread = name, "panic: {info}");
    }));
    let again = args.clone();
    let reload: ringsocks::server::Reload =
        Box::new(move || Config::from_args(&again).map_err(|e| e.to_string()));
    match ringsocks::server::run(config, Some(reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
