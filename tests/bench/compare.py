#!/usr/bin/env python3
"""Side-by-side comparison of Warren and RabbitMQ on this machine, in one command:

    python3 tests/bench/compare.py                # print the table, write target/bench-compare.txt
    python3 tests/bench/compare.py --write-docs   # ... and put it into docs/benchmarks.md

Environment: BENCH_SECONDS (10) seconds per throughput scenario, BENCH_CROSS_SECONDS
(BENCH_SECONDS, at most 5) seconds per cross-node and load-balanced run, BENCH_RUNS (3) rounds,
BENCH_ONLY=GROUP[,GROUP...] for some scenarios alone: single (single-node scenarios),
garagemq (the scenarios garagemq also runs, on all three single-node brokers), quorum,
cross, balanced (three-node scenarios; cluster = all three of them). BENCH_BUILD=0 skips the
cargo build (binaries from $CARGO_TARGET_DIR/release, default target/release).

garagemq (Debian's package, a Go AMQP broker) runs as a third single-node broker in the
scenarios of GARAGE_SCENARIOS, after Warren and RabbitMQ in every round, on its own port and
data directory; without /usr/bin/garagemq it is skipped with a note.

Builds Warren (release), installs Debian's rabbitmq-server with apt-get if it is missing, and
runs BENCH_RUNS rounds. In each round every scenario runs once against each broker: one
broker goes through all single-node scenarios and is stopped, then the other; then three
clustered nodes of one broker, then of the other. Which broker goes first alternates from
round to round, and only one broker (or one three-node cluster) runs at a time. Each broker
starts every round from an empty data directory, is restarted before every scenario marked
fresh (the memory scenarios, and the first throughput scenario to drop the million queued
messages), and both brokers go through the same start / stop / restart steps.

For each scenario and broker the table gives the median of the rounds and their range
(min-max). The ratio is Warren's median against RabbitMQ's, oriented so that >1 means Warren
is better; in parentheses the ratio range the two spreads allow (worst case: Warren's worst
run against RabbitMQ's best; best case the other way round). Ratios are printed with 2
significant digits, 3 only when both ends of the ratio range round to the same 2 digits.

RabbitMQ runs with RabbitMQ's recommended setting for a small, shared machine: the Erlang
scheduler busy-wait flags `+sbwt none +sbwtdcpu none +sbwtdio none`, passed through
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS and checked on the running VM's command line. Otherwise
both brokers run their default configuration (RabbitMQ: `loopback_users = none`, so guest
may connect).

Each scenario names its client: [raw] is warren-perf --raw (AMQP framing by hand on a tokio
socket, batched writes: the client costs little CPU, so the broker is what is measured), [lapin]
the lapin client (PerfTest-like per-message cost on the client). The same client runs against
both brokers. Broker and load tool share this machine's cores: the header line says so.
"""

import json
import math
import struct
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
# The cross-node and load-balanced scenarios: ten more runs per round, shorter by default.
CROSS_SECONDS = int(os.environ.get("BENCH_CROSS_SECONDS", str(min(SECONDS, 5))))
RUNS = max(1, int(os.environ.get("BENCH_RUNS", "3")))
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN, END = "<!-- compare.py: begin -->", "<!-- compare.py: end -->"
WARREN_PORT, RABBIT_PORT, GARAGE_PORT = 5801, 5802, 5803
GARAGE_ADMIN_PORT = 15803
GARAGE_BIN = "/usr/bin/garagemq"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RABBIT_NODE = "compare-rabbit@localhost"
RABBIT_BIN = "/usr/lib/rabbitmq/bin"
# RabbitMQ's advice for nodes on shared or small machines: no scheduler busy-waiting.
RABBIT_ERL_ARGS = "+sbwt none +sbwtdcpu none +sbwtdio none"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def wait_port(port, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


def wait_port_free(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
        except OSError:
            return
        time.sleep(0.3)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    """utime + stime of `pid` in clock ticks: fields 14 and 15 of /proc/PID/stat (counted
    after the parenthesised command name, which may hold spaces)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def warren_bin(name):
    return os.path.join(TARGET, "release", name)


class Warren:
    name = "Warren"

    def __init__(self, work):
        self.base = os.path.join(work, "warren")
        self.env = dict(os.environ, WARREN_BASE=self.base, WARREN_NODE_PORT=str(WARREN_PORT),
                        WARREN_NODENAME="compare-warren")
        self.port = WARREN_PORT

    def wipe(self):
        """Empty data directory: every round starts from the same state."""
        shutil.rmtree(self.base, ignore_errors=True)

    def start(self):
        run([warren_bin("warren-server"), "-detached"], env=self.env)
        wait_port(self.port)

    def pid(self):
        path = os.path.join(self.base, f"compare-warren@{socket.gethostname().split('.')[0]}",
                            "node.json")
        with open(path) as f:
            return json.load(f)["pid"]

    def stop(self):
        subprocess.run([warren_bin("warrenctl"), "-n", "compare-warren", "stop"],
                       env=self.env, capture_output=True)
        wait_port_free(self.port)


def ensure_rabbit_installed():
    if not os.path.exists(os.path.join(RABBIT_BIN, "rabbitmq-server")):
        print("installing rabbitmq-server with apt-get ...", flush=True)
        run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", "rabbitmq-server"],
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)


def rabbit_env(base, i, node, port):
    """Environment of one RabbitMQ node; all nodes under `base` share HOME (the Erlang cookie)."""
    suffix = "" if i is None else f"-{i}"
    return dict(os.environ, HOME=os.path.join(base, "home"),
                RABBITMQ_MNESIA_BASE=os.path.join(base, f"mnesia{suffix}"),
                RABBITMQ_LOG_BASE=os.path.join(base, f"log{suffix}"),
                RABBITMQ_NODENAME=node, RABBITMQ_NODE_PORT=str(port),
                RABBITMQ_DIST_PORT=str(port + 20000),
                RABBITMQ_CONFIG_FILE=os.path.join(base, "rabbitmq"),
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=RABBIT_ERL_ARGS)


def rabbit_init(base):
    os.makedirs(os.path.join(base, "home"), exist_ok=True)
    with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
        f.write("loopback_users = none\n")


def rabbit_wipe(base):
    for entry in os.listdir(base):
        if entry.startswith(("mnesia", "log")):
            shutil.rmtree(os.path.join(base, entry), ignore_errors=True)


def rabbit_await(node, env):
    deadline = time.time() + 120
    while time.time() < deadline:
        r = subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", node, "await_startup"],
                           env=env, capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(1)
    raise SystemExit(f"RabbitMQ node {node} did not start within 120 s")


def rabbit_pid(node, env):
    out = subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", node, "eval",
                          "os:getpid()."], env=env, capture_output=True, text=True)
    digits = re.sub(r"[^0-9]", "", out.stdout)
    if not digits:
        raise SystemExit(f"cannot find RabbitMQ's pid: {out.stdout} {out.stderr}")
    return int(digits)


def check_erl_args(node, env):
    """The busy-wait flags as the running VM got them (the last occurrence of a flag wins).
    erl hands `+flag` to the emulator as `-flag`, so beam.smp's command line has either."""
    with open(f"/proc/{rabbit_pid(node, env)}/cmdline", "rb") as f:
        argv = f.read().decode(errors="replace").split("\0")
    want = RABBIT_ERL_ARGS.split()
    for flag, value in zip(want[::2], want[1::2]):
        names = (flag, "-" + flag[1:])
        seen = [argv[i + 1] for i in range(len(argv) - 1) if argv[i] in names]
        if not seen or seen[-1] != value:
            raise SystemExit(f"RabbitMQ node {node} runs with {flag} {seen or 'unset'}, "
                             f"not {value}: RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS did not reach it")


class Rabbit:
    name = "RabbitMQ"

    def __init__(self, work):
        self.base = os.path.join(work, "rabbit")
        rabbit_init(self.base)
        self.env = rabbit_env(self.base, None, RABBIT_NODE, RABBIT_PORT)
        self.port = RABBIT_PORT

    def wipe(self):
        rabbit_wipe(self.base)

    def start(self):
        ensure_rabbit_installed()
        run([os.path.join(RABBIT_BIN, "rabbitmq-server"), "-detached"], env=self.env)
        rabbit_await(RABBIT_NODE, self.env)
        wait_port(self.port)
        check_erl_args(RABBIT_NODE, self.env)

    def pid(self):
        return rabbit_pid(RABBIT_NODE, self.env)

    def stop(self):
        subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", RABBIT_NODE, "stop"],
                       env=self.env, capture_output=True)
        wait_port_free(self.port)


class GarageMQ:
    """garagemq (Debian's package) on its own port, admin port and data directory, started in
    the foreground as a child of this script (it has no detached mode) and stopped with
    SIGTERM."""
    name = "garagemq"

    def __init__(self, work):
        self.base = os.path.join(work, "garagemq")
        self.port = GARAGE_PORT
        self.proc = None

    @staticmethod
    def installed():
        return os.access(GARAGE_BIN, os.X_OK)

    def wipe(self):
        shutil.rmtree(self.base, ignore_errors=True)

    def start(self):
        os.makedirs(self.base, exist_ok=True)
        config = os.path.join(self.base, "config.yaml")
        # The package's /etc/garagemq/config.yaml with this script's ports and data directory;
        # the password is md5("guest"), as in the packaged file.
        with open(config, "w") as f:
            f.write(f"""proto: amqp-rabbit
users:
  - username: guest
    password: 084e0343a0486ff05530df6c705c8bb4
tcp:
  ip: 127.0.0.1
  port: {self.port}
  nodelay: false
  readBufSize: 196608
  writeBufSize: 196608
admin:
  ip: 127.0.0.1
  port: {GARAGE_ADMIN_PORT}
queue:
  shardSize: 8192
  maxMessagesInRam: 131072
db:
  defaultPath: {os.path.join(self.base, "db")}
  engine: badger
vhost:
  defaultPath: /
security:
  passwordCheck: md5
connection:
  channelsMax: 4096
  frameMaxSize: 65536
""")
        log = open(os.path.join(self.base, "garagemq.log"), "ab")
        self.proc = subprocess.Popen([GARAGE_BIN, "--config", config, "--log-level", "warning"],
                                     cwd=self.base, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                with open(os.path.join(self.base, "garagemq.log"), errors="replace") as f:
                    tail = f.read()[-2000:]
                self.proc = None
                raise SystemExit(f"garagemq exited at start:\n{tail}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                if time.time() > deadline:
                    raise SystemExit(f"garagemq does not listen on port {self.port} after 60 s")
                time.sleep(0.3)

    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        wait_port_free(self.port)


SUMMARY = re.compile(r"sending rate avg: (\d+) msg/s, confirmed avg: (\d+) msg/s, "
                     r"receiving rate avg: (\d+) msg/s, .*latency: (\S+)")
SETUP = re.compile(r"setup: (\d+) ms")
QUEUED = re.compile(r"queued: (\d+) messages")

# One run per (broker, arguments) and round: scenarios reading two figures of one run share
# it. Emptied whenever a broker starts a round.
_runs = {}


def perf_command(port, args, seconds=None):
    uri = f"amqp://guest:guest@127.0.0.1:{port}/%2f"
    return [warren_bin("warren-perf"), "--uri", uri,
            "-z", str(SECONDS if seconds is None else seconds)] + list(args)


def perf_parse(out, err, returncode, args, who):
    """The figures of one warren-perf run: setup ms, queued, summary rates, latency."""
    r = {}
    for line in out.splitlines():
        m = SETUP.search(line)
        if m:
            r["setup_ms"] = int(m.group(1))
        m = QUEUED.search(line)
        if m:
            r["queued"] = int(m.group(1))
        m = SUMMARY.search(line)
        if m:
            lat = m.group(4).split("/")
            lat = [int(x) for x in lat] if len(lat) == 5 else [0] * 5
            r.update({"sent": int(m.group(1)), "confirmed": int(m.group(2)),
                      "received": int(m.group(3)), "p50": lat[1], "p99": lat[4]})
    if "sent" not in r or returncode != 0:
        raise SystemExit(f"warren-perf {args} against {who} failed:\n{out}\n{err}")
    return r


def perf(broker, args, seconds=None):
    key = (broker.name, tuple(args))
    if key in _runs:
        return _runs[key]
    out = subprocess.run(perf_command(broker.port, args, seconds), capture_output=True,
                         text=True, env=dict(os.environ, RUST_BACKTRACE="0"))
    r = perf_parse(out.stdout, out.stderr, out.returncode, args, broker.name)
    _runs[key] = r
    return r


def idle_memory(broker, n=1000):
    pid = broker.pid()
    before = rss_kb(pid)
    probe = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "idle_connections.py"),
                              str(broker.port), str(n), "8"], stdout=subprocess.PIPE, text=True)
    probe.stdout.readline()  # "opened N": all handshakes done
    time.sleep(2)
    after = rss_kb(pid)
    probe.wait()
    return (after - before) * 1024 / n


def queued_memory(broker, n=1_000_000):
    """Publishes n transient 16 B messages into one queue with no consumer (raw client,
    pipelined, confirm window 5,000), checks that the broker counts all n in the queue, and
    returns RSS growth per message. Confirms matter: without them RabbitMQ 3.10 once lost 97 of
    the million when the publisher closed its connection with a backlog held by flow control."""
    pid = broker.pid()
    before = rss_kb(pid)
    r = perf(broker, ["--raw", "-x", "1", "-y", "0", "-s", "16", "-C", str(n), "-c", "5000",
                      "-e", "", "-u", "mem-1m"], seconds=max(SECONDS, 120))
    if r.get("queued", 0) < n:
        raise SystemExit(f"{broker.name} queued only {r.get('queued')} of {n} messages")
    time.sleep(2)
    after = rss_kb(pid)
    return (after - before) * 1024 / n


# Topic exchange with 10,000 bindings: binding i is `stock.<i>.*` (one queue), message i is
# published with routing key `stock.<i % 10000>.nyse`, so each message matches exactly one binding.
TOPIC = ["--raw", "-s", "16", "-a", "-e", "cmp-topic", "-t", "topic", "-u", "s6",
         "--bindings", "10000", "--binding-key", "stock.{i}.*", "-k", "stock.{i}.nyse"]
# The same 10,000 bindings on an exchange and queue of their own, each queue.bind sent only
# once the previous bind-ok is in; no producer or consumer, only the setup is timed.
TOPIC_SEQUENTIAL_BINDS = ["--raw", "-x", "0", "-y", "0", "-e", "cmp-topic-seq", "-t", "topic",
                          "-u", "s6s", "--bindings", "10000", "--binding-key", "stock.{i}.*",
                          "--bind-sequential"]

# (name, function of the broker, run on a freshly started broker)
SCENARIOS = [
    ("memory per idle connection: bytes (lower is better)", idle_memory, True),
    ("1,000,000 queued 16 B transient messages: bytes per message (lower is better)",
     queued_memory, True),
    ("1p/1c 16 B transient autoack [raw]: received msg/s",
     lambda b: perf(b, ["--raw", "-s", "16", "-a", "-u", "s1", "-e", "cmp-direct"])["received"], True),
    ("1p/1c 16 B transient autoack [lapin]: received msg/s",
     lambda b: perf(b, ["-s", "16", "-a", "-u", "s1l", "-e", "cmp-direct"])["received"], False),
    ("1p/1c 1 KiB persistent, confirms 1000, prefetch 1000 [raw]: confirmed msg/s",
     lambda b: perf(b, ["--raw", "-s", "1024", "-f", "persistent", "-c", "1000", "-q", "1000",
                        "-u", "s2", "-e", "cmp-direct"])["confirmed"], False),
    ("fanout to 10 queues, 16 B autoack, confirms 1000 [raw]: received msg/s",
     lambda b: perf(b, ["--raw", "-s", "16", "-a", "-e", "cmp-fanout", "-t", "fanout", "--queues",
                        "10", "-y", "10", "-u", "s3", "-c", "1000"])["received"], False),
    ("topic exchange, 10,000 bindings, 16 B autoack [raw]: received msg/s",
     lambda b: perf(b, TOPIC)["received"], False),
    ("topic exchange: 10,000 queue.bind one at a time: setup ms (lower is better)",
     lambda b: perf(b, TOPIC_SEQUENTIAL_BINDS, seconds=0)["setup_ms"], False),
    ("topic exchange: 10,000 queue.bind, pipelined: setup ms (lower is better)",
     lambda b: perf(b, TOPIC)["setup_ms"], False),
    ("latency at 5,000 msg/s [raw]: p50 µs (lower is better)",
     lambda b: perf(b, ["--raw", "-r", "5000", "-u", "s4", "-e", "cmp-direct"])["p50"], False),
    ("latency at 5,000 msg/s [raw]: p99 µs (lower is better)",
     lambda b: perf(b, ["--raw", "-r", "5000", "-u", "s4", "-e", "cmp-direct"])["p99"], False),
]


def join_to_first(cluster):
    """Nodes 2 and 3 join node 1 as RabbitMQ's clustering guide does (same verbs in both CLIs)."""
    for i in (1, 2):
        for step in (["stop_app"], ["reset"], ["join_cluster", cluster.nodes[0]], ["start_app"]):
            cluster.ctl(i, *step)


class WarrenCluster(Warren):
    """Three Warren nodes on this machine, clustered with warrenctl join_cluster."""
    name = "Warren"

    def __init__(self, work):
        self.base = os.path.join(work, "warren-cluster")
        self.nodes = [f"compare-warren-{i}@localhost" for i in (1, 2, 3)]
        self.ports = [5821, 5822, 5823]
        self.port = self.ports[0]

    def env_for(self, i):
        return dict(os.environ, WARREN_BASE=self.base, WARREN_NODENAME=self.nodes[i],
                    WARREN_NODE_PORT=str(self.ports[i]), WARREN_COOKIE="compare-cluster")

    def ctl(self, i, *args):
        run([warren_bin("warrenctl"), "-n", self.nodes[i]] + list(args),
            env=self.env_for(i), stdout=subprocess.DEVNULL)

    def start(self):
        for i in range(3):
            run([warren_bin("warren-server"), "-detached"], env=self.env_for(i))
            wait_port(self.ports[i])
        join_to_first(self)
        self.pids = [self.node_pid(i) for i in range(3)]

    def node_pid(self, i):
        with open(os.path.join(self.base, self.nodes[i], "node.json")) as f:
            return json.load(f)["pid"]

    def pid(self):
        return self.node_pid(0)

    def queue_nodes(self):
        """{queue: node owning it}, as `warrenctl list_queues name node` on node 1 lists them."""
        out = subprocess.run([warren_bin("warrenctl"), "-n", self.nodes[0], "list_queues",
                              "name", "node"], env=self.env_for(0), capture_output=True,
                             text=True, check=True).stdout
        return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)

    def stop(self):
        for i in range(3):
            subprocess.run([warren_bin("warrenctl"), "-n", self.nodes[i], "stop"],
                           env=self.env_for(i), capture_output=True)
            wait_port_free(self.ports[i])


class RabbitCluster(Rabbit):
    """Three RabbitMQ nodes on this machine, clustered with rabbitmqctl join_cluster."""
    name = "RabbitMQ"

    def __init__(self, work):
        self.base = os.path.join(work, "rabbit-cluster")
        rabbit_init(self.base)
        self.nodes = [f"compare-rabbit-{i}@localhost" for i in (1, 2, 3)]
        self.ports = [5831, 5832, 5833]
        self.port = self.ports[0]

    def env_for(self, i):
        return rabbit_env(self.base, i, self.nodes[i], self.ports[i])

    def ctl(self, i, *args):
        run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.nodes[i]] + list(args),
            env=self.env_for(i), stdout=subprocess.DEVNULL)

    def start(self):
        ensure_rabbit_installed()
        for i in range(3):
            run([os.path.join(RABBIT_BIN, "rabbitmq-server"), "-detached"], env=self.env_for(i))
        for i in range(3):
            rabbit_await(self.nodes[i], self.env_for(i))
            wait_port(self.ports[i])
            check_erl_args(self.nodes[i], self.env_for(i))
        join_to_first(self)
        # beam.smp of each node (stop_app / start_app in the join keep the VM).
        self.pids = [rabbit_pid(self.nodes[i], self.env_for(i)) for i in range(3)]

    def pid(self):
        return rabbit_pid(self.nodes[0], self.env_for(0))

    def queue_nodes(self):
        """{queue: node of its queue process}, from `rabbitmqctl list_queues name pid`."""
        out = subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.nodes[0],
                              "list_queues", "-q", "--no-table-headers", "name", "pid"],
                             env=self.env_for(0), capture_output=True, text=True,
                             check=True).stdout
        nodes = {}
        for line in out.splitlines():
            m = re.match(r"(\S+)\s+<(.+?@[^.>]+)\.", line)
            if m:
                nodes[m.group(1)] = m.group(2)
        return nodes

    def stop(self):
        for i in range(3):
            subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.nodes[i], "stop"],
                           env=self.env_for(i), capture_output=True)
            wait_port_free(self.ports[i])


def amqp_delete_queues(port, names):
    """queue.delete of each of `names` through a plain socket (this script has no AMQP client
    library): handshake as tests/idle_connections.py does it, channel 1, one delete after
    the other, connection.close."""
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.settimeout(300)  # a queue with a backlog of millions may take a while to go

    def shortstr(b):
        return bytes([len(b)]) + b

    def send(ch, cls, mth, args=b""):
        payload = struct.pack(">HH", cls, mth) + args
        s.sendall(struct.pack(">BHI", 1, ch, len(payload)) + payload + b"\xce")

    def read(n):
        b = b""
        while len(b) < n:
            chunk = s.recv(n - len(b))
            if not chunk:
                raise SystemExit(f"port {port} closed the connection while deleting {names}")
            b += chunk
        return b

    def expect(cls, mth):
        while True:
            t, _, size = struct.unpack(">BHI", read(7))
            body = read(size + 1)[:-1]
            if t != 1:
                continue
            got = struct.unpack(">HH", body[:4])
            if got == (cls, mth):
                return body
            if got in ((10, 50), (20, 40)):
                text = body[7:7 + body[6]].decode(errors="replace")
                raise SystemExit(f"port {port} refused queue.delete of {names}: {text}")

    s.sendall(b"AMQP\x00\x00\x09\x01")
    expect(10, 10)
    send(0, 10, 11, struct.pack(">I", 0) + shortstr(b"PLAIN")
         + struct.pack(">I", 12) + b"\0guest\0guest" + shortstr(b"en_US"))
    tune = expect(10, 30)
    channel_max, frame_max, _ = struct.unpack(">HIH", tune[4:12])
    send(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0))
    send(0, 10, 40, shortstr(b"/") + shortstr(b"") + b"\0")
    expect(10, 41)
    send(1, 20, 10, shortstr(b""))
    expect(20, 11)
    for name in names:
        send(1, 50, 40, struct.pack(">H", 0) + shortstr(name.encode()) + b"\0")
        expect(50, 41)
    send(0, 10, 50, struct.pack(">H", 200) + shortstr(b"") + struct.pack(">HH", 0, 0))
    expect(10, 51)
    s.close()


def cluster_run(broker, key, clients, delete=(), seconds=SECONDS):
    """Runs one warren-perf process per (node index, arguments) in `clients` at the same time,
    each with its clients connected to that node, and sums their rates. Around the run it reads
    the CPU time (utime + stime) of all three broker node processes: `cpu_us` is their sum
    over the run divided by the messages received (received rate x seconds). Then deletes
    the queues `delete` (name, node index of the owner), so that no backlog stays for the
    scenarios after. One run per key and round, as perf() does."""
    key = (broker.name, "cluster") + tuple(key)
    if key in _runs:
        return _runs[key]
    env = dict(os.environ, RUST_BACKTRACE="0")
    before = sum(cpu_ticks(p) for p in broker.pids)
    rss_before = [rss_kb(p) for p in broker.pids]
    procs = [(i, args, subprocess.Popen(perf_command(broker.ports[i], args, seconds), env=env,
                                        text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE))
             for i, args in clients]
    outs = []
    try:
        for i, args, p in procs:
            out, err = p.communicate(timeout=seconds + 300)
            outs.append((i, args, out, err, p.returncode))
    finally:
        for _, _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    after = sum(cpu_ticks(p) for p in broker.pids)
    rss_after = [rss_kb(p) for p in broker.pids]
    total = {"sent": 0, "confirmed": 0, "received": 0}
    for i, args, out, err, rc in outs:
        r = perf_parse(out, err, rc, args, f"{broker.name} node {i + 1}")
        for k in total:
            total[k] += r[k]
    messages = total["received"] * seconds
    total["cpu_us"] = (after - before) / CLK_TCK * 1e6 / messages if messages else math.nan
    # Measured with the run's queues still there, drained: what they keep once traffic stops.
    total["rss_growth_mb"] = max(a - b for a, b in zip(rss_after, rss_before)) / 1024
    by_owner = {}
    for name, owner in delete:
        by_owner.setdefault(owner, []).append(name)
    for owner, names in by_owner.items():
        amqp_delete_queues(broker.ports[owner], names)
    _runs[key] = total
    return total


def declare_on(broker, owner, args):
    """Declares the exchange, queue and binding of warren-perf `args` through node `owner`
    alone (a setup-only run: no producer, no consumer), so that the queue lives there whichever
    node the clients connect to later (both brokers place a classic queue on the node the
    declaring client is connected to)."""
    out = subprocess.run(perf_command(broker.ports[owner], list(args) + ["-x", "0", "-y", "0"], 0),
                         capture_output=True, text=True, env=dict(os.environ, RUST_BACKTRACE="0"))
    perf_parse(out.stdout, out.stderr, out.returncode, args, f"{broker.name} node {owner + 1}")


# The classic queues the selected cross-node and load-balanced scenarios need, as
# (queue, owner node index, warren-perf arguments); main() fills it in.
PREPARED = []


def prepare(broker):
    """Once per round: declares every queue of PREPARED through its owner node and checks with
    one CLI call that each lives there. The queues stay idle until their scenario runs."""
    key = (broker.name, "prepare")
    if key in _runs:
        return
    for name, owner, args in PREPARED:
        declare_on(broker, owner, args)
    nodes = broker.queue_nodes()
    for name, owner, _ in PREPARED:
        if nodes.get(name) != broker.nodes[owner]:
            raise SystemExit(f"{broker.name}: queue {name} lives on {nodes.get(name)}, "
                             f"not on {broker.nodes[owner]} (queues: {nodes})")
    _runs[key] = True


# Scenarios on three nodes of each broker (all six processes on this machine's cores).
QUORUM = ["--raw", "-s", "1024", "--quorum-queue", "-c", "1000", "-q", "1000", "-u", "qq1",
          "-e", "cmp-direct"]


def quorum_run(b):
    return cluster_run(b, ["quorum"], [(0, QUORUM)], delete=[("qq1", 0)])


# Cross-node: a classic queue declared through node 1 (so owned by node 1), producer and
# consumer (one warren-perf process) connected either to node 1 ("local", index 0) or to
# node 2 ("cross", index 1): then every publish goes node 2 -> node 1 and every delivery
# node 1 -> node 2 over the brokers' own inter-node links. Two variants, as the single-node
# rows: 1 KiB persistent with confirms (figure: confirmed) and 16 B transient autoack (figure:
# received). Each (variant, client node) has a queue of its own: xp-1, xp-2, xt-1, xt-2.
CROSS = {
    "p": (["--raw", "-s", "1024", "-f", "persistent", "-c", "1000", "-q", "1000", "-e",
           "cmp-direct"], "confirmed"),
    "t": (["--raw", "-s", "16", "-a", "-e", "cmp-direct"], "received"),
}


def cross_queue(variant, client):
    return f"x{variant}-{client + 1}"


CROSS_QUEUES = [(cross_queue(v, c), 0, CROSS[v][0] + ["-u", cross_queue(v, c)])
                for v in CROSS for c in (0, 1)]


def cross_run(b, variant, client):
    prepare(b)
    q = cross_queue(variant, client)
    return cluster_run(b, ["cross", variant, client], [(client, CROSS[variant][0] + ["-u", q])],
                       delete=[(q, 0)], seconds=CROSS_SECONDS)


def cross_rate(b, variant, client):
    return cross_run(b, variant, client)[CROSS[variant][1]]


# Load-balanced: three classic queues lb-1, lb-2, lb-3, lb-k declared through (so owned by)
# node k. For each queue lb-k one producer connected to node k-1 publishes to it and one
# consumer connected to node k+1 consumes from it (node numbers mod 3):
#
#     queue  owner  producer on  consumer on
#     lb-1   node 1   node 3       node 2
#     lb-2   node 2   node 1       node 3
#     lb-3   node 3   node 2       node 1
#
# so every node has one producer, one consumer and one queue, and every message crosses two
# inter-node links (producer's node -> owner -> consumer's node), no message stays on one
# node. Six warren-perf processes (one client each) run at the same time; the figure is the
# sum of the three consumers' rates. 16 B transient, autoack, as the single-node 1p/1c row.
BALANCED = ["--raw", "-s", "16", "-a", "-e", "cmp-direct"]


BALANCED_QUEUES = [(f"lb-{k + 1}", k, BALANCED + ["-u", f"lb-{k + 1}"]) for k in range(3)]


def balanced_run(b):
    prepare(b)
    clients = []
    for name, k, args in BALANCED_QUEUES:
        clients.append(((k + 1) % 3, args + ["-x", "0", "-y", "1"]))  # consumer
    for name, k, args in BALANCED_QUEUES:
        clients.append(((k - 1) % 3, args + ["-x", "1", "-y", "0"]))  # producer
    return cluster_run(b, ["balanced"], clients,
                       delete=[(name, k) for name, k, _ in BALANCED_QUEUES],
                       seconds=CROSS_SECONDS)


CPU = "broker CPU µs per received message, sum of 3 nodes (lower is better)"
QUORUM_SCENARIOS = [
    ("3 nodes: quorum queue, 1 KiB, confirms 1000, prefetch 1000 [raw]: confirmed msg/s",
     lambda b: quorum_run(b)["confirmed"], True),
    (f"3 nodes: quorum queue, 1 KiB, confirms 1000, prefetch 1000 [raw]: {CPU}",
     lambda b: quorum_run(b)["cpu_us"], False),
    ("3 nodes: quorum queue, 1 KiB, confirms 1000, prefetch 1000 [raw]: largest RSS growth of "
     "a node over the run, queue drained, MB (lower is better)",
     lambda b: quorum_run(b)["rss_growth_mb"], False),
]
CROSS_SCENARIOS = []
for _v, _what in (("p", "classic queue on node 1, 1 KiB persistent, confirms 1000, "
                        "prefetch 1000 [raw]"),
                  ("t", "classic queue on node 1, 16 B transient autoack [raw]")):
    _fig = CROSS[_v][1]
    CROSS_SCENARIOS += [
        (f"3 nodes: {_what}, clients on node 1 (local): {_fig} msg/s",
         lambda b, v=_v: cross_rate(b, v, 0), False),
        (f"3 nodes: {_what}, clients on node 2 (cross-node): {_fig} msg/s",
         lambda b, v=_v: cross_rate(b, v, 1), False),
        (f"3 nodes: {_what}: cross-node / local {_fig} rate",
         lambda b, v=_v: cross_rate(b, v, 1) / cross_rate(b, v, 0), False),
        (f"3 nodes: {_what}, clients on node 1 (local): {CPU}",
         lambda b, v=_v: cross_run(b, v, 0)["cpu_us"], False),
        (f"3 nodes: {_what}, clients on node 2 (cross-node): {CPU}",
         lambda b, v=_v: cross_run(b, v, 1)["cpu_us"], False),
    ]
BALANCED_SCENARIOS = [
    ("3 nodes: load-balanced, 3 classic queues (one per node), 3p/3c, each message via 3 "
     "nodes, 16 B transient autoack [raw]: total received msg/s",
     lambda b: balanced_run(b)["received"], False),
    ("3 nodes: load-balanced, 3 classic queues (one per node), 3p/3c, each message via 3 "
     f"nodes, 16 B transient autoack [raw]: {CPU}",
     lambda b: balanced_run(b)["cpu_us"], False),
]
CLUSTER_SCENARIOS = QUORUM_SCENARIOS + CROSS_SCENARIOS + BALANCED_SCENARIOS


def one_round(broker, scenarios, results, label):
    """Every scenario once against `broker`, from an empty data directory; restarts before
    each scenario marked fresh. Stops the broker at the end."""
    _runs.clear()
    broker.wipe()
    running = False
    started = time.time()
    try:
        for name, f, fresh in scenarios:
            if running and fresh:
                broker.stop()
                running = False
            if not running:
                broker.start()
                running = True
            print(f"{label} {broker.name}: {name} ...", flush=True)
            value = f(broker)
            results.setdefault((broker.name, name), []).append(value)
            print(f"    {num(value)}", flush=True)
    finally:
        broker.stop()
    print(f"{label} {broker.name}: done in {time.time() - started:.0f} s", flush=True)


def sig(x, digits):
    """`x` rounded to `digits` significant digits, in plain notation."""
    if not math.isfinite(x):
        return "?"
    if x == 0:
        return "0"
    places = digits - 1 - math.floor(math.log10(abs(x)))
    if places > 0:
        return f"{x:.{places}f}"
    return f"{round(x, places):.0f}"


def num(x):
    """A figure as the table prints it: whole numbers with thousands separators from 100 up,
    3 significant digits below (ratios, µs per message)."""
    if not math.isfinite(x) or abs(x) >= 100:
        return f"{x:,.0f}" if math.isfinite(x) else "?"
    return sig(x, 3)


def spread(values):
    """`median (min–max)` of one broker's runs; a single run is printed alone."""
    med = statistics.median(values)
    if len(values) == 1:
        return num(med)
    return f"{num(med)} ({num(min(values))}–{num(max(values))})"


def ratio_text(rabbit, warren, lower_better):
    """Warren's median against RabbitMQ's (>1: Warren better) and the range the spreads allow."""
    if lower_better:
        med = statistics.median(rabbit) / statistics.median(warren) if min(warren) else math.nan
        worst = min(rabbit) / max(warren) if min(warren) else math.nan
        best = max(rabbit) / min(warren) if min(warren) else math.nan
    else:
        med = statistics.median(warren) / statistics.median(rabbit) if min(rabbit) else math.nan
        worst = min(warren) / max(rabbit) if min(rabbit) else math.nan
        best = max(warren) / min(rabbit) if min(rabbit) else math.nan
    if len(rabbit) == 1 and len(warren) == 1:
        return f"{sig(med, 2)}x"
    digits = 3 if sig(worst, 2) == sig(best, 2) else 2
    return f"{sig(med, digits)}x ({sig(worst, digits)}–{sig(best, digits)})"


def comparison_rows(results, other, scenarios):
    """One table row per scenario: `other`'s figures, Warren's, and Warren's advantage."""
    rows = []
    for name, _, _ in scenarios:
        theirs, warren = results[(other, name)], results[("Warren", name)]
        rows.append(f"| {name} | {spread(theirs)} | {spread(warren)} | "
                    f"{ratio_text(theirs, warren, 'lower is better' in name)} |")
    return rows


def write_docs(text):
    with open(DOCS) as f:
        doc = f.read()
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{DOCS} lacks the markers {BEGIN} / {END}")
    doc = doc[:start + len(BEGIN)] + "\n\n" + text + "\n" + doc[end:]
    with open(DOCS, "w") as f:
        f.write(doc)
    print(f"wrote the table into {os.path.relpath(DOCS, ROOT)}")


# The single-node scenarios garagemq runs as well (by name, from SCENARIOS).
GARAGE_SCENARIOS = [
    "1,000,000 queued 16 B transient messages: bytes per message (lower is better)",
    "1p/1c 16 B transient autoack [raw]: received msg/s",
]
GROUPS = ("single", "garagemq", "quorum", "cross", "balanced")


def selected_groups():
    """BENCH_ONLY as a set of groups (all of them when unset); cluster = the three-node ones."""
    raw = os.environ.get("BENCH_ONLY", "").replace(" ", "")
    if not raw:
        return set(GROUPS)
    groups = set()
    for g in raw.split(","):
        if g == "cluster":
            groups |= {"quorum", "cross", "balanced"}
        elif g in GROUPS:
            groups.add(g)
        elif g:
            raise SystemExit(f"BENCH_ONLY: unknown group {g!r} (groups: cluster, "
                             f"{', '.join(GROUPS)})")
    return groups


def main():
    args = sys.argv[1:]
    if any(a not in ("--write-docs",) for a in args):
        raise SystemExit("usage: python3 tests/bench/compare.py [--write-docs]")
    if os.environ.get("BENCH_BUILD", "1") != "0":
        run(["cargo", "build", "--release", "-q", "-p", "warren", "--bin", "warren-server",
             "--bin", "warrenctl", "-p", "warren-tests", "--bin", "warren-perf"], cwd=ROOT)
    groups = selected_groups()
    garage_note = None
    if "single" in groups:
        singles_run = list(SCENARIOS)
    elif "garagemq" in groups:
        singles_run = [sc for sc in SCENARIOS if sc[0] in GARAGE_SCENARIOS]
    else:
        singles_run = []
    garage_run = []
    if "garagemq" in groups:
        if GarageMQ.installed():
            garage_run = [sc for sc in singles_run if sc[0] in GARAGE_SCENARIOS]
        else:
            garage_note = (f"garagemq is not installed ({GARAGE_BIN} missing; "
                           f"`apt-get install garagemq`): its scenarios were skipped")
            print(f"note: {garage_note}", flush=True)
    PREPARED[:] = ((CROSS_QUEUES if "cross" in groups else [])
                   + (BALANCED_QUEUES if "balanced" in groups else []))
    clusters_run = ((QUORUM_SCENARIOS if "quorum" in groups else [])
                    + (CROSS_SCENARIOS if "cross" in groups else [])
                    + (BALANCED_SCENARIOS if "balanced" in groups else []))
    work = tempfile.mkdtemp(prefix="warren-compare-")
    singles = [Rabbit(work), Warren(work)] if singles_run else []
    garage = GarageMQ(work) if garage_run else None
    clusters = [RabbitCluster(work), WarrenCluster(work)] if clusters_run else []
    scenarios = singles_run + clusters_run
    results = {}
    load_before = os.getloadavg()
    started = time.time()
    try:
        for r in range(RUNS):
            # Round 1 starts with RabbitMQ, round 2 with Warren, and so on; garagemq after both.
            step = 1 if r % 2 == 0 else -1
            label = f"[round {r + 1}/{RUNS}]"
            for b in singles[::step]:
                one_round(b, singles_run, results, label)
            if garage:
                one_round(garage, garage_run, results, label)
            for b in clusters[::step]:
                print(f"{label} {b.name}: three clustered nodes", flush=True)
                one_round(b, clusters_run, results, label)
    finally:
        for b in singles + clusters + ([garage] if garage else []):
            b.stop()
        shutil.rmtree(work, ignore_errors=True)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    load_after = os.getloadavg()

    def version(package):
        return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                              capture_output=True, text=True).stdout.strip() or "?"

    rabbit_version = version("rabbitmq-server")
    commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "?"
    runs = f"{RUNS} runs" if RUNS > 1 else "1 run"
    cross_note = f" ({CROSS_SECONDS} s per cross-node and load-balanced run)" if PREPARED else ""
    lines = [f"Warren ({commit}: release build, default config) vs RabbitMQ {rabbit_version} "
             f"(Debian package, default config but `loopback_users = none`, Erlang VM flags "
             f"`{RABBIT_ERL_ARGS}`) on "
             f"{os.cpu_count()} cores ({cpu}); broker and load tool share them; {runs} of each "
             f"scenario per broker, alternating which broker goes first; {SECONDS} s per "
             f"throughput scenario{cross_note}; load tool: warren-perf ([raw] client or [lapin]); whole run "
             f"{time.time() - started:.0f} s; load average {load_before[0]:.1f} before, "
             f"{load_after[0]:.1f} after", "",
             "| scenario | RabbitMQ: median (range) | Warren: median (range) "
             "| Warren advantage (range) |", "|---|---|---|---|"]
    lines += comparison_rows(results, "RabbitMQ", scenarios)
    if garage_run:
        lines += ["", f"Third broker, single node: garagemq {version('garagemq')} (Debian "
                  f"package, Go; the packaged config.yaml with its own port and data "
                  f"directory), the same rounds, after Warren and RabbitMQ in each; Warren's "
                  f"column repeats the table above", "",
                  "| scenario | garagemq: median (range) | Warren: median (range) "
                  "| Warren advantage over garagemq (range) |", "|---|---|---|---|"]
        lines += comparison_rows(results, "garagemq", garage_run)
    elif garage_note:
        lines += ["", f"Note: {garage_note}."]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(TARGET, exist_ok=True)
    with open(os.path.join(TARGET, "bench-compare.txt"), "w") as f:
        f.write(text)
    if "--write-docs" in args:
        write_docs(text)


if __name__ == "__main__":
    main()
