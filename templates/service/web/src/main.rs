//! @name@-web binary: parse flags and config, then serve or probe.

use clap::Subcommand;
use kit::config::Cli;
use @snake@_web::{Application, Settings};

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Exit 0 when the local /health answers 200 (for container health checks).
    Probe,
}

#[global_allocator]
static ALLOCATOR: bootstrap::Allocator = bootstrap::Allocator;

fn main() -> anyhow::Result<()> {
    let identity = kit::identity!();
    let cli = Cli::<Command>::parse_as(identity.name, identity.version, "REST gateway for the @name@ service");
    kit::main(identity, &cli.flags, |center, settings: Settings| async move {
        if let Some(Command::Probe) = cli.command {
            kit::http::probe(([127, 0, 0, 1], settings.server.port).into()).await?;
            return Ok(());
        }
        let live = center.watch();
        let app = Application::build(&settings).await?;
        app.follow_settings(&live);
        app.run_until_stopped(bootstrap::shutdown_signal()).await?;
        Ok(())
    })
}
