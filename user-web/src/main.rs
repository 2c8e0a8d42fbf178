//! user-web binary: parse flags and config, then serve.

use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use user_web::{Application, Settings, config::Overrides};

#[derive(Debug, Parser)]
#[command(version, about = "REST gateway for the user service")]
struct Cli {
    /// TOML file layered over the defaults (the environment still wins).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to bind [default: 127.0.0.1].
    #[arg(long)]
    ip: Option<IpAddr>,
    /// Port to bind; 0 lets the OS pick [default: 8021].
    #[arg(long)]
    port: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Exit 0 when the local /health answers 200 (for container health checks).
    Probe,
}

#[global_allocator]
static ALLOCATOR: bootstrap::Allocator = bootstrap::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bootstrap::init_logging();
    let settings = Settings::load(
        cli.config.as_deref(),
        &Overrides {
            ip: cli.ip,
            port: cli.port,
        },
    )?;
    if let Some(Command::Probe) = cli.command {
        user_web::app::probe(([127, 0, 0, 1], settings.server.port).into()).await?;
        return Ok(());
    }
    let app = Application::build(&settings).await?;
    app.run_until_stopped(bootstrap::shutdown_signal()).await?;
    Ok(())
}
