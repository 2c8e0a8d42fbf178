//! @name@-srv binary: parse flags and config, then serve, migrate or probe.

use clap::Subcommand;
use kit::{config::Cli, db::Db};
use @snake@_srv::{Application, Settings, repo};

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Exit 0 when the local server reports SERVING (for container health checks).
    Probe {
        /// Probe this address's gRPC health service; default: 127.0.0.1 and the admin port's
        /// `/health` when the admin port is fixed, else the configured port.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
    },
}

fn main() -> anyhow::Result<()> {
    let identity = kit::identity!();
    let cli = Cli::<Command>::parse_as(identity.name, identity.version, "gRPC @name@ service");
    kit::main(identity, &cli.flags, |center, settings: Settings| async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                // Only the log filter changes live here; the kit applies it.
                let _live = center.watch();
                let app = Application::build(&settings).await?;
                app.run_until_stopped(bootstrap::shutdown_signal()).await?;
            }
            Command::Migrate => {
                let db = Db::open(&settings.database).await?;
                db.migrate(&repo::MIGRATIONS).await?;
                tracing::info!(db = ?db.dialect(), "migrations applied");
            }
            Command::Probe { addr } => kit::grpc::probe_local(&settings.server, addr).await?,
        }
        Ok(())
    })
}
