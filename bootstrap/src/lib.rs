//! What every binary here does first and last: parse the common flags, bind, install the log
//! subscriber, build the runtime, and wait for SIGTERM or SIGINT to begin an orderly
//! shutdown. A leaf: the Consul double uses it too, so it knows nothing of services.

mod log_writer;
pub mod telemetry;

use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::OnceLock,
};

use tracing_subscriber::EnvFilter;

pub use config::Value;
pub use log_writer::{BatchWriter, LogGuard};

/// The allocator of the allocation-heavy binaries (`#[global_allocator]` in their `main.rs`):
/// user-web and the Consul double. user-srv keeps the system allocator (see its `main.rs`).
pub use mimalloc::MiMalloc as Allocator;

/// A server binary's command line: the [`ServerFlags`] every server takes and the binary's
/// own subcommands `C` (none given: serve).
#[derive(Debug, clap::Parser)]
pub struct Cli<C: clap::Subcommand> {
    #[command(flatten)]
    pub flags: ServerFlags,
    #[command(subcommand)]
    pub command: Option<C>,
}

impl<C: clap::Subcommand> Cli<C> {
    /// Parses the process's arguments, with the binary's `name`, `version` and `about` in
    /// `--help` and `--version`; bad ones end the process with clap's message.
    pub fn parse_as(name: &'static str, version: &'static str, about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command()
            .name(name)
            .version(version)
            .about(about)
            .get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// The flags every server binary takes; they win over every other settings layer.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServerFlags {
    /// TOML file layered over the defaults (the environment still wins).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Address to bind.
    #[arg(long, global = true)]
    pub ip: Option<IpAddr>,
    /// Port to bind; 0 lets the OS pick a free one.
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// Once serving, write the bound address (`ip:port` and a newline) to this file: the
    /// machine-readable signal that the server is ready, for scripts and tests.
    #[arg(long, global = true)]
    pub ready_file: Option<PathBuf>,
}

impl ServerFlags {
    /// The `server.ip` / `server.port` overrides these flags make.
    pub fn overrides(&self) -> Vec<(&'static str, Value)> {
        let mut out: Vec<(&'static str, Value)> = Vec::new();
        if let Some(ip) = self.ip {
            out.push(("server.ip", ip.to_string().into()));
        }
        if let Some(port) = self.port {
            out.push(("server.port", i64::from(port).into()));
        }
        if let Some(file) = &self.ready_file {
            out.push(("server.ready_file", file.display().to_string().into()));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source} (is the port in use? --port 0 picks a free one)")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds the listener a server keeps for its whole life, and the address actually bound
/// (the OS's choice when the port was 0).
pub async fn bind(
    ip: IpAddr,
    port: u16,
) -> Result<(tokio::net::TcpListener, SocketAddr), BindError> {
    let addr = SocketAddr::new(ip, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((listener, local))
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`; the filter can be
/// swapped later, see [`set_log_filter`]), `LOG_FORMAT=json` switches to JSON lines. Colours
/// only on a terminal, so piped logs stay greppable. Lines go to stdout through a
/// [`BatchWriter`], so a request never waits for a `write`. With an OTLP endpoint in the
/// environment, spans are also exported as `service`'s traces (see [`telemetry`]). Hold the
/// returned guard until `main` returns: it sends the last spans and writes the last lines.
pub fn init_logging(service: &str) -> std::io::Result<Logging> {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, logs) = BatchWriter::new(std::io::stdout())?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    let fmt = if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let (traces, telemetry) = telemetry::layer(service).unzip();
    // A second init (tests start several servers in one process) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(traces)
        .with(fmt)
        .try_init()
        .is_ok();
    if installed {
        let _ = RELOAD.set(Box::new(move |f| {
            handle.reload(f).map_err(|e| e.to_string())
        }));
    }
    Ok(Logging {
        _telemetry: telemetry,
        _logs: logs,
    })
}

/// What [`init_logging`] keeps running; dropped in field order: the last spans are sent
/// before the last lines are written.
#[derive(Debug)]
pub struct Logging {
    _telemetry: Option<telemetry::TelemetryGuard>,
    _logs: LogGuard,
}

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Swaps the filter of the subscriber [`init_logging`] installed.
static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Checks a filter in `RUST_LOG` syntax (e.g. `info,user_srv=debug`).
pub fn parse_log_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("{directives:?} is not a log filter: {e}"))
}

/// Replaces the log filter of the running process. Tracing caches which call sites are on, so
/// a static filter costs nothing per event, before or after the swap. `Ok(false)` when no
/// reloadable subscriber is installed (tests).
pub fn set_log_filter(directives: &str) -> Result<bool, String> {
    let filter = parse_log_filter(directives)?;
    match RELOAD.get() {
        Some(reload) => reload(filter).map(|()| true),
        None => Ok(false),
    }
}

/// The async runtime a server runs on: `threads` = 1 is a single-threaded runtime (no
/// hand-offs between workers: the cheapest per request when a service scales by instances),
/// 0 one worker per CPU, anything else that many workers. Blocking work (password hashing,
/// SQLite's connection threads) runs on threads of its own either way.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    builder.enable_all().build()
}

/// For tests: logs go through the test harness, so they show only for failing tests.
pub fn init_test_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Writes `addr` and a newline to `file` (through a rename, so a reader never sees half a
/// line): the documented signal that a server is ready, for scripts and tests.
pub fn announce_ready(file: Option<&std::path::Path>, addr: SocketAddr) -> std::io::Result<()> {
    let Some(file) = file else {
        return Ok(());
    };
    let partial = file.with_extension("partial");
    std::fs::write(&partial, format!("{addr}\n"))?;
    std::fs::rename(&partial, file)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
