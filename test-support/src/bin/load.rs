//! `load`: the benchmarks' HTTP/1.1 load generator (see `test_support::load`). Prints one
//! JSON summary.
//!
//! load [-c CONNECTIONS] [-q RATE] [-z SECONDS] [-t TIMEOUT_SECONDS] [-H 'Name: value']... URL
//! Without -q it runs a closed loop; with it, an open loop at RATE requests a second.

use std::time::Duration;

use test_support::load::{Plan, run};

fn usage(problem: &str) -> ! {
    eprintln!("load: {problem}");
    eprintln!(
        "usage: load [-c CONNECTIONS] [-q RATE] [-z SECONDS] [-t SECONDS] [-H 'Name: value']... URL"
    );
    std::process::exit(2)
}

fn number(flag: &str, value: Option<String>) -> f64 {
    match value.as_deref().map(str::parse::<f64>) {
        Some(Ok(v)) if v.is_finite() && v > 0.0 => v,
        _ => usage(&format!("{flag} takes a number above 0")),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut connections, mut rate, mut seconds, mut timeout) = (64.0, None, 10.0, 10.0);
    let (mut headers, mut url) = (Vec::new(), None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" => connections = number("-c", args.next()),
            "-q" => rate = Some(number("-q", args.next())),
            "-z" => seconds = number("-z", args.next()),
            "-t" => timeout = number("-t", args.next()),
            "-H" => headers.push(args.next().unwrap_or_else(|| usage("-H takes a header"))),
            _ if arg.starts_with('-') => usage(&format!("unknown flag {arg}")),
            _ => url = Some(arg),
        }
    }
    let url = url.unwrap_or_else(|| usage("no URL"));
    let (addr, request) = Plan::get(&url, &headers).unwrap_or_else(|e| usage(&e));
    let plan = Plan {
        addr,
        request,
        connections: connections as usize,
        rate,
        duration: Duration::from_secs_f64(seconds),
        timeout: Duration::from_secs_f64(timeout),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage(&format!("no runtime: {e}")));
    let mut report = runtime.block_on(run(plan));
    println!("{}", report.to_json());
}
