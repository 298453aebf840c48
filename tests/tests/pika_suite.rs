//! Runs the Python pika suite (tests/python) against a real warren-server: what a Python user
//! of the most common RabbitMQ client sees, including RabbitMQ's exact reply codes and texts.
//!
//! Needs `python3` with `pika` installed (`pip install pika`); without it this test fails
//! rather than passing silently. `WARREN_TEST_PYTHON` picks another interpreter.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warren_tests::TestBroker;

/// The whole suite normally takes well under a minute; this only stops a hung run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

fn python_dir() -> PathBuf {
    // CARGO_MANIFEST_DIR is <workspace>/tests.
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace directory")
        .to_path_buf();
    workspace.join("tests").join("python")
}

fn python() -> String {
    std::env::var("WARREN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fails the test (with the fix spelled out) unless `import pika` works.
fn require_pika() {
    let out = Command::new(python())
        .args(["-c", "import pika; print(pika.__version__)"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}): the pika suite needs Python 3 with pika; \
                 install Python 3, then run `pip install pika`",
                python()
            )
        });
    assert!(
        out.status.success(),
        "`import pika` failed: run `pip install pika` (the pika suite needs it)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "pika {} on {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        python()
    );
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

#[test]
fn pika_client_suite_passes() {
    require_pika();
    let dir = python_dir();
    assert!(
        dir.join("warren_support.py").exists(),
        "{} has no pika suite",
        dir.display()
    );
    let broker = TestBroker::start();

    let started = Instant::now();
    let mut child = Command::new(python())
        .args(["-m", "unittest", "discover", "-s"])
        .arg(&dir)
        .args(["-t"])
        .arg(&dir)
        .args(["-p", "test_*.py", "-v"])
        .current_dir(&dir)
        .env("WARREN_TEST_PORT", broker.port.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 -m unittest");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));

    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break Some(status);
        }
        if started.elapsed() > SUITE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    // unittest reports on stderr; print both so `cargo test -- --nocapture` shows every test.
    println!("{stdout}");
    println!("{stderr}");
    println!("pika suite took {:.1} s", started.elapsed().as_secs_f64());

    let Some(status) = status else {
        panic!(
            "the pika suite did not finish within {SUITE_TIMEOUT:?}\nbroker log:\n{}",
            broker.log()
        );
    };
    assert!(
        status.success(),
        "the pika suite failed ({status}); see the unittest output above\nbroker log tail:\n{}",
        tail(&broker.log(), 60)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
