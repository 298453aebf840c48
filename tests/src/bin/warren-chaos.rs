//! `warren-chaos`: fault injection for quorum queues and classic durable queues (see
//! `warren_tests::chaos`).
//!
//! Starts a three-node cluster of real `warren-server` processes (found next to this
//! executable, so `cargo run --release -p warren-tests --bin warren-chaos` uses the release
//! build), declares the quorum queue "chaos", publishes with confirms and consumes with manual
//! acks while it SIGKILLs a node per cycle (the queue's leader on odd-numbered cycles, the next
//! node in turn on the others) and starts it again. Exit code 0 when no confirmed message
//! was lost, 1 when some were, 2 when the run itself failed.
//!
//! ```text
//! warren-chaos [--classic] [--cycles N] [--up SECS] [--down SECS] [--rate R] [--seed N] [--keep]
//! ```

use std::process::ExitCode;

use warren_tests::chaos::{self, ChaosConfig};

const USAGE: &str =
    "usage: warren-chaos [--classic] [--cycles N] [--up SECS] [--down SECS] [--rate R] [--seed N] [--keep]

  --classic     a classic durable queue owned by the first node (default: a quorum queue);
                its owner is killed where the quorum queue's leader would be
  --cycles N    kill/restart cycles (3)
  --up SECS     seconds all nodes run before each kill (4)
  --down SECS   seconds the killed node stays down (3)
  --rate R      messages published per second (300)
  --seed N      where the node rotations start (0)
  --keep        keep the nodes' directory (data, logs) and print its path";

fn parse() -> Result<ChaosConfig, String> {
    fn value<T: std::str::FromStr>(
        flag: &str,
        v: Option<String>,
        ok: impl Fn(&T) -> bool,
    ) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse::<T>()
            .ok()
            .filter(|x| ok(x))
            .ok_or_else(|| format!("{flag}: invalid value {v:?}"))
    }
    let secs = |x: &f64| x.is_finite() && *x >= 0.0;
    let mut cfg = ChaosConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // Also accept --flag=value.
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut next = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "--cycles" => cfg.cycles = value(&flag, next(), |_: &u32| true)?,
            "--up" => cfg.up_secs = value(&flag, next(), secs)?,
            "--down" => cfg.down_secs = value(&flag, next(), secs)?,
            "--rate" => cfg.rate = value(&flag, next(), |r: &u32| *r > 0)?,
            "--seed" => cfg.seed = value(&flag, next(), |_: &u64| true)?,
            "--keep" => cfg.keep_dir = true,
            "--classic" => cfg.classic = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(cfg)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warren-chaos: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!(
        "warren-chaos: {} queue, {} cycles, {} s up, {} s down, {} msg/s, seed {}",
        if cfg.classic {
            "classic durable"
        } else {
            "quorum"
        },
        cfg.cycles,
        cfg.up_secs,
        cfg.down_secs,
        cfg.rate,
        cfg.seed
    );
    match chaos::run(&cfg).await {
        Ok(report) => {
            println!("{}", report.summary());
            if report.lost().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("warren-chaos: the run failed: {e:#}");
            ExitCode::from(2)
        }
    }
}
