//! user-srv binary: parse flags and config, then serve, migrate, probe or seed.

use anyhow::Context;
use clap::Subcommand;
use kit::{
    config::{
        Cli,
        center::{ConfigCenter, Live},
    },
    db::Db,
};
use user_srv::{
    Application, Settings, repo,
    seed::{self, SeedRequest},
};

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
    /// Insert demo users and an admin; running it again changes nothing.
    Seed {
        #[arg(long, default_value_t = 20)]
        users: u32,
        #[arg(long)]
        admin_mobile: String,
        #[arg(long, env = "USER_SRV_ADMIN_PASSWORD", hide_env_values = true)]
        admin_password: String,
    },
}

/// The system allocator: under the list load it costs user-srv within noise of mimalloc, whose
/// arenas kept up to 30 MB resident per instance against glibc's 12 MB (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: std::alloc::System = std::alloc::System;

fn main() -> anyhow::Result<()> {
    let identity = kit::identity!();
    let cli = Cli::<Command>::parse_as(identity.name, identity.version, "gRPC user service");
    let flags = cli.flags.clone();
    kit::main(identity, &flags, |center, settings| {
        run(cli, center, settings)
    })
}

async fn run(
    cli: Cli<Command>,
    center: ConfigCenter<Settings>,
    settings: Settings,
) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            // Only the log filter changes live here; the kit applies it.
            let _live: Live<Settings> = center.watch();
            let app = Application::build(&settings).await?;
            app.run_until_stopped(bootstrap::shutdown_signal()).await?;
        }
        Command::Migrate => {
            let db = Db::open(&settings.database).await?;
            db.migrate(&repo::MIGRATIONS).await?;
            tracing::info!(db = ?db.dialect(), "migrations applied");
        }
        Command::Probe { addr } => kit::grpc::probe_local(&settings.server, addr).await?,
        Command::Seed {
            users,
            admin_mobile,
            admin_password,
        } => {
            let db = Db::open(&settings.database).await?;
            db.migrate(&repo::MIGRATIONS).await?;
            let request = SeedRequest {
                users,
                admin_mobile,
                admin_password,
            };
            let report = seed::seed(&db, &request).await.context("seeding failed")?;
            tracing::info!(
                inserted = report.inserted,
                already_present = report.already_present,
                admin = %request.admin_mobile,
                "seed done"
            );
        }
    }
    Ok(())
}
