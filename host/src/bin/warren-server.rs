//! `warren-server`: runs one Warren node in the foreground, or with `-detached` in the
//! background, returning once the node accepts AMQP connections.

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use warren::config::{NodeConfig, NodeRuntimeFile, load_or_create_cookie};

const USAGE: &str = "usage: warren-server [-detached]\n\nRuns a Warren node. The node is chosen by WARREN_NODENAME, WARREN_NODE_PORT, WARREN_DIST_PORT,\nWARREN_BASE and WARREN_CONFIG_FILE (see the README).";

/// Counts live heap bytes for the memory alarm (see `warren::memory`).
#[global_allocator]
static GLOBAL: warren::memory::CountingAllocator = warren::memory::CountingAllocator;

fn main() -> ExitCode {
    warren::memory::CountingAllocator::mark_installed();
    let mut detached = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "-detached" | "--detached" => detached = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("warren-server: unknown argument '{other}'\n{USAGE}");
                return ExitCode::from(64);
            }
        }
    }
    let result = if detached {
        run_detached()
    } else {
        run_foreground()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-server: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn already_running(config: &NodeConfig) -> anyhow::Result<()> {
    if let Ok(Some(rt)) = NodeRuntimeFile::read(&config.data_dir)
        && rt.process_alive()
        && rt.pid != std::process::id()
    {
        anyhow::bail!(
            "node {} is already running (pid {}, port {})",
            config.node_name,
            rt.pid,
            rt.amqp_port
        );
    }
    Ok(())
}

fn run_foreground() -> anyhow::Result<()> {
    let config = NodeConfig::from_env().context("configuration")?;
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| {
        format!(
            "warren={}",
            warren::config::tracing_level(&config.settings.log_console_level)
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // No colour codes in the log file of a detached node.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    already_running(&config)?;
    let cookie = load_or_create_cookie().context("cookie")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let node = warren::open(config, cookie).await?;
        node.run().await?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// Starts the node as a child in its own session with output to `<data dir>/warren.log`,
/// and waits until it accepts AMQP connections.
fn run_detached() -> anyhow::Result<()> {
    let config = NodeConfig::from_env().context("configuration")?;
    already_running(&config)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    // Create the cookie before forking so the CLI and the node agree on it at once.
    load_or_create_cookie().context("cookie")?;
    let log_path = config.data_dir.join("warren.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating warren-server")?;
    let mut cmd = Command::new(exe);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and runs in the child before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the node process")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            anyhow::bail!(
                "node {} exited during start-up ({status}): {last} (see {})",
                config.node_name,
                log_path.display()
            );
        }
        let ours = NodeRuntimeFile::read(&config.data_dir)
            .ok()
            .flatten()
            .is_some_and(|rt| rt.pid == child.id());
        if ours
            && TcpStream::connect_timeout(
                &([127, 0, 0, 1], config.amqp_port).into(),
                Duration::from_millis(500),
            )
            .is_ok()
        {
            let _ = writeln!(
                std::io::stdout(),
                "Warren node {} started (pid {}, port {})",
                config.node_name,
                child.id(),
                config.amqp_port
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "node {} did not start within 120 s (see {})",
                config.node_name,
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
