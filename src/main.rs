//! `streamline`: the broker binary. With no arguments it serves Kafka clients on
//! 127.0.0.1:9092 with data in ./data (WAL in ./data/wal).
//!
//! Exit codes: 0 after a clean shutdown (SIGINT or SIGTERM), 1 when start-up or
//! shutdown fails, 2 for an invalid command line (nothing is touched on disk then).

use std::process::ExitCode;

use clap::Parser;
use streamline::{config::Cli, server::Server, storage::TopicManager};

#[global_allocator]
static ALLOCATOR: huge_alloc::HugeAllocGuard = huge_alloc::HugeAllocGuard;

/// Keeps one malformed request from aborting the broker.
///
/// The `kafka-protocol` decoders call `Vec::with_capacity(n)` with an array length
/// read from the request before checking it against the bytes present, so a 30-byte
/// frame claiming 2^31 elements asks for hundreds of GiB. The system allocator refuses
/// and Rust aborts the process. Here allocations of 1 GiB and more are served by an
/// `MAP_NORESERVE` anonymous mapping instead: reserving address space always succeeds
/// (except under strict overcommit), the decoder fails on the missing bytes, and the
/// mapping is returned untouched. Smaller allocations go to the system allocator.
mod huge_alloc {
    #![expect(unsafe_code, reason = "a global allocator is unsafe by definition")]

    use std::alloc::{GlobalAlloc, Layout, System};

    const HUGE: usize = 1 << 30;
    const PAGE: usize = 4096;

    /// See the module documentation.
    pub struct HugeAllocGuard;

    fn is_huge(layout: Layout) -> bool {
        layout.size() >= HUGE && layout.align() <= PAGE
    }

    // SAFETY: every method forwards to `System` except for huge layouts, which are
    // always mapped and unmapped here: `dealloc` gets the same layout `alloc` got (the
    // GlobalAlloc contract), so both sides take the same branch. mmap returns
    // page-aligned (>= the layout's alignment, checked in is_huge), zero-filled memory.
    // SAFETY (impl): as above.
    unsafe impl GlobalAlloc for HugeAllocGuard {
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract; see the impl comment.
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if is_huge(layout) {
                map(layout.size())
            } else {
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { System.alloc(layout) }
            }
        }

        // SAFETY: the caller upholds GlobalAlloc::alloc_zeroed's contract; see the impl comment.
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if is_huge(layout) {
                map(layout.size()) // anonymous mappings are zero-filled
            } else {
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { System.alloc_zeroed(layout) }
            }
        }

        // SAFETY: the caller upholds GlobalAlloc::dealloc's contract; see the impl comment.
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if is_huge(layout) {
                // SAFETY: `ptr` came from `map(layout.size())` (same layout, same branch).
                unsafe { libc::munmap(ptr.cast(), layout.size()) };
            } else {
                // SAFETY: forwarded with the caller's guarantees.
                unsafe { System.dealloc(ptr, layout) }
            }
        }
    }

    fn map(size: usize) -> *mut u8 {
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }
}

fn main() -> ExitCode {
    let config = Cli::parse().into_config();
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STREAMLINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("streamline-io")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "broker failed");
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: streamline::config::Config) -> streamline::Result<()> {
    let storage = tokio::task::spawn_blocking(move || TopicManager::new(config))
        .await
        .map_err(|e| {
            streamline::Error::io(
                "recovery task",
                "data",
                std::io::Error::other(e.to_string()),
            )
        })??;
    let server = match Server::bind(storage.clone()).await {
        Ok(s) => s,
        Err(e) => {
            let s = storage.clone();
            let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
            return Err(e);
        }
    };
    // Tests and scripts read this line to learn the port (with --listen HOST:0).
    println!("streamline listening on {}", server.local_addr());
    server.run(shutdown_signal()).await;
    tracing::info!("stopped serving; flushing storage");
    let s = storage.clone();
    tokio::task::spawn_blocking(move || s.shutdown())
        .await
        .map_err(|e| {
            streamline::Error::io(
                "shutdown task",
                "data",
                std::io::Error::other(e.to_string()),
            )
        })??;
    tracing::info!("shut down cleanly");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
}
