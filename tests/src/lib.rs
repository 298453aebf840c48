//! Test support: starts real `warren-server` processes in a temporary WARREN_BASE on free
//! ports, and kills them when the handle drops, so no test leaks a process.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod chaos;
pub mod fuzz;

/// The directory holding the workspace's built binaries (target/debug next to the test exe).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/debug; a binary of this crate
    // (target/release/warren-chaos) already sits next to the broker's binaries.
    let dir = exe.parent().expect("target directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target directory").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (cargo test --workspace builds them)",
        p.display()
    );
    p
}

/// Where host/build.rs builds the plugin components, including the
/// test-only ones that are not embedded (e.g. `test_misbehave.wasm`).
pub fn wasm_plugin_dir() -> PathBuf {
    bin_dir()
        .parent()
        .expect("target directory")
        .join("wasm-plugins/wasm32-wasip2/release")
}

/// A free TCP port whose +20000 neighbour (the dist port) is free too.
///
/// Both stay below the kernel's ephemeral range (32768 and up by default):
/// nodes of a cluster open many outgoing connections, and one of them taking
/// a dist port between this check and the node's bind made start-up fail.
pub fn free_port() -> u16 {
    const LOW: u16 = 10000;
    const HIGH: u16 = 32767 - 20000;
    // Tests in one process pick concurrently: a counter keeps their picks apart.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    loop {
        let step = NEXT.fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        let candidate = LOW + rand_u16().wrapping_add(step) % (HIGH - LOW);
        if TcpListener::bind(("0.0.0.0", candidate)).is_ok()
            && TcpListener::bind(("0.0.0.0", candidate + 20000)).is_ok()
        {
            return candidate;
        }
    }
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id().wrapping_mul(2654435761)) as u16
}

/// One node: its name, port, data and the running process (if started).
pub struct Node {
    pub name: String,
    pub port: u16,
    pub base: PathBuf,
    pub home: PathBuf,
    pub child: Option<Child>,
    /// Extra `key = value` lines for warren.conf.
    pub config: String,
    /// Extra environment for the node and its CLIs (e.g. WARREN_PLUGINS_DIR).
    pub env: Vec<(String, String)>,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        // Tests in one process start brokers concurrently: a counter keeps their dirs apart.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "warren-test-{tag}-{}-{n}-{}",
            std::process::id(),
            rand_u16()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Node {
    /// A node named `name` in `base`, on a free port; not started yet.
    pub fn new(name: &str, base: &Path) -> Node {
        let home = base.join("home");
        std::fs::create_dir_all(&home).expect("home");
        Node {
            name: name.to_string(),
            port: free_port(),
            base: base.to_path_buf(),
            home,
            child: None,
            config: String::new(),
            env: Vec::new(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join(self.full_name())
    }

    pub fn full_name(&self) -> String {
        if self.name.contains('@') {
            self.name.clone()
        } else {
            format!("{}@localhost", self.name)
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("WARREN_BASE", &self.base)
            .env("WARREN_NODENAME", self.full_name())
            .env("WARREN_NODE_PORT", self.port.to_string())
            .env_remove("WARREN_DIST_PORT")
            .env_remove("WARREN_CONFIG_FILE")
            .env("HOME", &self.home)
            .env("WARREN_COOKIE", "test-cookie-secret");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    /// Runs `warren-plugins -n <node> args...` with this node's environment.
    pub fn plugins(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("warren-plugins"));
        self.env(&mut cmd);
        cmd.arg("-n").arg(self.full_name()).args(args);
        cmd.output().expect("run warren-plugins")
    }

    /// Starts the node in the foreground (as a child) and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node already started");
        std::fs::create_dir_all(self.data_dir()).expect("data dir");
        if !self.config.is_empty() {
            std::fs::write(self.data_dir().join("warren.conf"), &self.config).expect("conf");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join(format!("{}.log", self.name)))
            .expect("log");
        let mut cmd = Command::new(bin("warren-server"));
        self.env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn warren-server"));
        self.wait_ready();
    }

    /// Runs warren-server with this node's config and waits for it to exit, for start-ups
    /// that must fail; a server still running after 30 s is killed and reported as `None`.
    pub fn run_server_expecting_exit(&self) -> Option<(std::process::ExitStatus, String)> {
        std::fs::create_dir_all(self.data_dir()).expect("data dir");
        std::fs::write(self.data_dir().join("warren.conf"), &self.config).expect("conf");
        let mut cmd = Command::new(bin("warren-server"));
        self.env(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn warren-server");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Some((status, err));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "warren-server exited during start-up: {status}\n{}",
                    self.log()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.data_dir().join("node.json").exists()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node did not start\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Runs `warrenctl -n <node> args...` with this node's environment.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("warrenctl"));
        self.env(&mut cmd);
        cmd.arg("-n").arg(self.full_name()).args(args);
        cmd.output().expect("run warrenctl")
    }

    /// Runs warrenctl and returns stdout, asserting success.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "warrenctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A started single node with its own temporary base directory.
pub struct TestBroker {
    pub node: Node,
    _dir: TempDir,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        Self::start_with_config("")
    }

    pub fn start_with_config(config: &str) -> TestBroker {
        let dir = TempDir::new("node");
        let mut node = Node::new("rabbit", &dir.0);
        node.config = config.to_string();
        node.start();
        TestBroker { node, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.node.url()
    }
}

impl std::ops::Deref for TestBroker {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl std::ops::DerefMut for TestBroker {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}
