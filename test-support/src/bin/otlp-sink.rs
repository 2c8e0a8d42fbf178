//! An OTLP/gRPC trace sink for benchmarks: accepts every export on the address given
//! (default 127.0.0.1:4317), keeps nothing, and on SIGTERM or SIGINT prints how many spans
//! arrived.

use test_support::otlp::Collector;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned());
    let sink = Collector::serve(&addr, false).await?;
    println!("otlp-sink listening on {}", sink.endpoint());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("spans received: {}", sink.count());
    Ok(())
}
