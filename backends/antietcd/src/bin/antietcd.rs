//! The `antietcd` server binary: antietcd 1.3.1's command line over [`antietcd::Node`].
//!
//! Flags use antietcd's names (`--persist_interval`); the dashed spellings (`--persist-interval`) work too.
//! SIGINT and SIGTERM shut down gracefully: connections and watches are closed and the data file written.

use antietcd::{Node, ServerConfig};
use clap::Parser;

/// A server allocates for every message it passes; mimalloc does that faster than glibc's allocator
/// (feature `mimalloc`, on by default; see the crate's Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = ServerConfig::parse();
    if !config.logs.is_empty() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("antietcd=info"));
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    } else {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("antietcd=warn"));
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("antietcd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("antietcd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: ServerConfig) -> Result<(), antietcd::ServerError> {
    let node = Node::start(config).await?;
    if let Some(addr) = node.local_addr() {
        eprintln!("antietcd: listening on {addr}");
    }
    wait_for_signal().await;
    eprintln!("antietcd: stopping");
    node.shutdown().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let quit = signal(SignalKind::quit());
        match (term, quit) {
            (Ok(mut term), Ok(mut quit)) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                    _ = quit.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
