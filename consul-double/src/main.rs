//! consul-double binary: a Consul stand-in for `make dev` when no `consul` binary exists.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use consul_double::{ConsulDouble, DoubleConfig};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A Consul agent stand-in for development and tests (not for production)"
)]
struct Cli {
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8500")]
    addr: SocketAddr,
    /// How often the critical-service reaper runs.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    reap_interval: Duration,
    /// Floor under DeregisterCriticalServiceAfter.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    deregister_minimum: Duration,
    /// Turns ACLs on, default deny, with this master token (as a 1.10 agent).
    #[arg(long, env = "CONSUL_DOUBLE_ACL_MASTER_TOKEN", hide_env_values = true)]
    acl_master_token: Option<String>,
    /// Once listening, write the bound address (`ip:port` and a newline) here; with
    /// `--addr 127.0.0.1:0` it is how a script learns the port.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Write JSON compact, as an agent out of dev mode does (a dev agent indents it, and so
    /// does this double by default). About half the bytes for the same answer.
    #[arg(long)]
    compact: bool,
    /// Print a fresh EC P-256 private key (SEC1 PEM) and exit: the `PrivateKey` a CA
    /// configuration takes to rotate Connect's CA (here or on a real agent).
    #[arg(long)]
    new_ca_key: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    consul_double::duration::parse(s).map(consul_double::duration::GoDuration::or_zero)
}

#[global_allocator]
static ALLOCATOR: bootstrap::Allocator = bootstrap::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.new_ca_key {
        print!("{}", consul_double::new_ca_key_pem());
        return Ok(());
    }
    let _logs = bootstrap::init_logging(env!("CARGO_PKG_NAME"))?;
    let double = ConsulDouble::start_on(
        cli.addr,
        DoubleConfig {
            reap_interval: cli.reap_interval,
            deregister_minimum: cli.deregister_minimum,
            acl_master_token: cli.acl_master_token,
            pretty: !cli.compact,
            ..DoubleConfig::default()
        },
    )
    .await?;
    tracing::info!(addr = %double.addr(), "consul-double listening (a Consul stand-in, dev and tests only)");
    bootstrap::announce_ready(cli.ready_file.as_deref(), double.addr())?;
    bootstrap::shutdown_signal().await;
    double.stop().await;
    Ok(())
}
