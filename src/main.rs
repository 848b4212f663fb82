//! `streamline`: the broker binary. With no arguments it serves Kafka clients on
//! 127.0.0.1:9092 with data in ./data (WAL in ./data/wal).
//!
//! Exit codes: 0 after a clean shutdown (SIGINT or SIGTERM; during recovery,
//! recovery runs to its end and the broker stops without serving, as during
//! the load of the groups' membership after it), 1 when
//! start-up or shutdown fails, 2 for an invalid command line or `STREAMLINE_*` variable
//! (`STREAMLINE_LOG` included; nothing is touched on disk then) or a
//! `--max-connections` the open-file limit cannot hold (judged before recovery,
//! and again after it, storage's files open), 130 (SIGINT) or 143
//! (SIGTERM) when a second stop signal ends the process without finishing the
//! shutdown (the next start recovers from the WAL).

use std::{io::Write, process::ExitCode, sync::Arc};

use streamline::{
    config::Cli,
    server::{Security, Server},
    storage::TopicManager,
};

/// See [`streamline::huge_alloc`]: one malformed request must not abort the broker.
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: streamline::huge_alloc::HugeAllocGuard = streamline::huge_alloc::HugeAllocGuard;

fn main() -> ExitCode {
    streamline::server::note_process_start();
    let cli = Cli::parse_or_exit();
    let from_env = cli.from_env.clone();
    let ignored = cli.ignored_settings();
    let config = match cli.into_valid_config() {
        Ok(c) => c,
        Err(e) => {
            report(format_args!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    let filter = match log_filter() {
        Ok(f) => f,
        Err(e) => {
            report(format_args!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // The log may live on the disk that just filled up or failed. A line that
        // cannot be written is dropped: the default reports it with `eprintln!`,
        // which panics when stderr fails, and so would every thread that logs.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for warning in &ignored {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("streamline-io")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report(format_args!("error: starting the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    // Every signal the broker handles is listened for from here on, before
    // anything is read or recovered (recovery can take minutes): SIGHUP never
    // stops the broker, and a SIGINT or SIGTERM during recovery stops it once
    // recovery is over, without serving.
    let signals = {
        let _runtime = runtime.enter();
        Signals::listen()
    };
    // Bad TLS material or SASL users are configuration errors: refused before
    // storage opens (loaded once, after the log is set up, so that the load's
    // warnings are seen).
    let security = match Security::load(&config.server) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            report(format_args!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    let open_files = streamline::server::raise_open_file_limit();
    tracing::debug!(?open_files, "open-file limit");
    if let Err(e) =
        streamline::server::check_max_connections(&config.server, open_files).and_then(|()| {
            streamline::server::check_segment_open_files(
                &config.storage,
                &config.server,
                open_files,
            )
        })
    {
        report(format_args!("error: {}", from_env.name_variable(e)));
        return ExitCode::from(2);
    }
    // An address in use stops the start before storage opens (recovery can
    // take minutes, and creates a new data directory's WAL).
    if let Err(e) = streamline::server::probe_listen(&config.server) {
        tracing::error!(error = %e, "broker failed");
        report(format_args!("error: {e}"));
        return ExitCode::from(1);
    }
    let ran = runtime.block_on(run(config, security, signals));
    let code = match ran {
        Ok(()) => ExitCode::SUCCESS,
        // `--max-connections` judged again once storage is open.
        Err(e @ streamline::Error::InvalidConfig { .. }) => {
            let e = from_env.name_variable(e);
            tracing::error!(error = %e, "broker refused its configuration");
            report(format_args!("error: {e}"));
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = %e, "broker failed");
            report(format_args!("error: {e}"));
            ExitCode::from(1)
        }
    };
    // Blocking work still running here (a group's membership store or an
    // offset expiry a shutdown stopped before its next group) is not waited
    // for: the runtime's drop waited for it with the second-signal listener
    // gone. Storage is shut down already, so what is left behind ends with
    // the process, as safe as a crash.
    runtime.shutdown_background();
    code
}

/// The log filter: `STREAMLINE_LOG` (a `tracing` filter such as `info`, `warn`
/// or `info,streamline::wal=debug`), `info` when unset or empty. An invalid value
/// is an error naming the variable.
fn log_filter() -> Result<tracing_subscriber::EnvFilter, String> {
    const VAR: &str = "STREAMLINE_LOG";
    let value = match std::env::var(VAR) {
        Ok(v) if !v.is_empty() => v,
        Ok(_) | Err(std::env::VarError::NotPresent) => "info".to_string(),
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(format!(
                "invalid configuration: {VAR} = {v:?}: not valid UTF-8"
            ))
        }
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(&value)
        .map_err(|e| {
            format!(
                "invalid configuration: {VAR} = {value:?}: {e} (accepted values: a tracing \
                 filter such as info, warn or info,streamline::wal=debug)"
            )
        })
}

/// Writes one line to stderr, ignoring a failure to do so (`eprintln!` would panic).
fn report(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The error of a blocking task that panicked (`what` names it).
fn joined<T>(
    what: &'static str,
    r: Result<streamline::Result<T>, tokio::task::JoinError>,
) -> streamline::Result<T> {
    r.map_err(|e| streamline::Error::io(what, "data", std::io::Error::other(e.to_string())))?
}

/// Flushes and closes storage, off the runtime's threads.
async fn shut_down(storage: TopicManager) -> streamline::Result<()> {
    joined(
        "shutdown task",
        tokio::task::spawn_blocking(move || storage.shutdown()).await,
    )
}

async fn run(
    config: streamline::config::Config,
    security: Arc<Security>,
    signals: Signals,
) -> streamline::Result<()> {
    let Signals { mut stop, hangups } = signals;
    let reloader = spawn_reloader(hangups, Arc::clone(&security), config.server.clone());
    let mut recovery = tokio::task::spawn_blocking(move || TopicManager::new(config));
    let storage = tokio::select! {
        r = &mut recovery => joined("recovery task", r)?,
        () = &mut stop => {
            // Recovery is not interrupted halfway: it runs to its end, and what
            // it recovered is flushed as at any other shutdown.
            tracing::info!("stopping once recovery is over, without serving");
            let storage = joined("recovery task", recovery.await)?;
            shut_down(storage).await?;
            tracing::info!("shut down cleanly after recovery, without serving");
            return Ok(());
        }
    };
    // Binding loads every group's membership file, which can take a while:
    // a stop signal meanwhile is acted on once it is over, without serving.
    let bind = Server::bind_with(storage.clone(), security);
    tokio::pin!(bind);
    let bound = tokio::select! {
        r = &mut bind => r,
        () = &mut stop => {
            tracing::info!("stopping once the server is set up, without serving");
            let bound = bind.await;
            // Its listeners closed before storage shuts down.
            let bound = bound.map(drop);
            shut_down(storage).await?;
            bound?;
            tracing::info!("shut down cleanly before serving");
            return Ok(());
        }
    };
    let server = match bound {
        Ok(s) => s,
        Err(e) => {
            // A storage fault is the one to report (exit 1), not the
            // refusal that led to the shutdown.
            if let Err(fault) = shut_down(storage).await {
                tracing::error!(error = %e, "could not serve");
                return Err(fault);
            }
            return Err(e);
        }
    };
    // Tests and scripts read this line to learn the port (with --listen HOST:0).
    // Not `println!`: a closed stdout must not panic the broker.
    // The metrics line, when there is one, comes first: "listening" is the last.
    let mut out = std::io::stdout();
    if let Some(addr) = server.metrics_addr() {
        let _ = writeln!(out, "streamline metrics on http://{addr}/metrics");
    }
    let _ =
        writeln!(out, "streamline listening on {}", server.local_addr()).and_then(|()| out.flush());
    server.run(stop).await;
    reloader.abort();
    tracing::info!("stopped serving; flushing storage");
    shut_down(storage).await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// The signals the broker handles, listened for from [`Signals::listen`] on.
struct Signals {
    /// Resolves at the first SIGINT or SIGTERM (Ctrl-C elsewhere); a second one
    /// then ends the process at once (see [`exit_at_second_signal`]).
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// SIGHUPs (Unix).
    hangups: Hangups,
}

impl Signals {
    /// Listens for every signal the broker handles; inside the runtime.
    fn listen() -> Signals {
        Signals {
            stop: Box::pin(shutdown_signal()),
            hangups: hangups(),
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;

#[cfg(not(unix))]
type Hangups = ();

/// Listens for SIGHUP: from now on it never stops the process.
#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; no reloads");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// Reloads the TLS material and SASL users at every SIGHUP, off the runtime's
/// threads (PBKDF2 and file reads); during recovery too, so that serving starts
/// with what the files hold.
fn spawn_reloader(
    hangups: Hangups,
    security: Arc<Security>,
    cfg: streamline::config::ServerConfig,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let Some(mut hup) = hangups else { return };
            let cfg = Arc::new(cfg);
            while hup.recv().await.is_some() {
                let (security, cfg) = (Arc::clone(&security), Arc::clone(&cfg));
                let done = tokio::task::spawn_blocking(move || security.reload(&cfg));
                if let Err(e) = done.await {
                    tracing::error!(error = %e, "reload task failed");
                }
            }
        }
        #[cfg(not(unix))]
        drop((hangups, security, cfg));
    })
}

/// A second stop signal: the process exits at once, with 128 + the signal's
/// number (130 for SIGINT, 143 for SIGTERM), without waiting for the rest of
/// the shutdown (a recovery or a final sync that takes long). Crash-safe: what
/// was acknowledged is in the WAL, which the next start replays.
fn exit_at_second_signal(name: &'static str, code: i32) -> ! {
    // Logged from another thread, given up to 500 ms: a stderr nobody reads
    // (what may have stalled the shutdown) blocks a log line, and must not
    // block the exit; nor may a thread that cannot be made.
    let (done, logged) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new().spawn(move || {
        tracing::warn!(
            signal = name,
            exit_code = code,
            "second stop signal: exiting without finishing the shutdown; the next start recovers from the WAL"
        );
        let _ = done.send(());
    });
    let _ = logged.recv_timeout(std::time::Duration::from_millis(500));
    std::process::exit(code)
}

#[cfg(not(unix))]
async fn shutdown_signal() {
    match tokio::signal::ctrl_c().await {
        Ok(()) => {
            // Armed before anything is logged (see the Unix variant).
            tokio::spawn(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    exit_at_second_signal("Ctrl-C", 130);
                }
            });
            tracing::info!("Ctrl-C received; shutting down");
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves at the first SIGINT or SIGTERM, and from then on listens for a
/// second one, which ends the process ([`exit_at_second_signal`]). Both are
/// listened for from the call on (not from the first poll), so that neither
/// kills the process after it.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            None
        }
    };
    let mut int = listen(SignalKind::interrupt(), "SIGINT");
    let mut term = listen(SignalKind::terminate(), "SIGTERM");
    async fn recv(s: &mut Option<Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    async move {
        let first = tokio::select! {
            _ = recv(&mut int) => "SIGINT",
            _ = recv(&mut term) => "SIGTERM",
        };
        // Armed before anything is logged: a log line blocks while stderr is
        // a pipe nobody reads, and the second signal is the way out of that.
        tokio::spawn(async move {
            tokio::select! {
                _ = recv(&mut int) => exit_at_second_signal("SIGINT", 130),
                _ = recv(&mut term) => exit_at_second_signal("SIGTERM", 143),
            }
        });
        tracing::info!("{first} received; shutting down");
    }
}
