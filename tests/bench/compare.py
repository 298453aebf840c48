#!/usr/bin/env python3
"""Side-by-side comparison of Warren and RabbitMQ on this machine, in one command:

    python3 tests/bench/compare.py            # BENCH_SECONDS=10 by default per scenario

Builds Warren (release), starts it; installs Debian's rabbitmq-server with apt-get if it is
missing and starts it on another port with its own data directory; runs the same scenarios
against each with warren-perf; prints a table (scenario, RabbitMQ, Warren, ratio) and writes
it to target/bench-compare.txt. Both brokers are processes this script owns and stops.
Broker and load tool share this machine's cores: the figures say so.

Each scenario names its client: [raw] is warren-perf --raw (AMQP framing by hand on a tokio
socket, batched writes: the client costs little CPU, so the broker is what is measured), [lapin]
the lapin client (PerfTest-like per-message cost on the client). The same client runs against
both brokers. Memory scenarios run on a freshly started broker; so does the first throughput
scenario (to drop the million queued messages).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WARREN_PORT, RABBIT_PORT = 5801, 5802
RABBIT_NODE = "compare-rabbit@localhost"
RABBIT_BIN = "/usr/lib/rabbitmq/bin"


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


class Warren:
    name = "Warren"

    def __init__(self, work):
        self.env = dict(os.environ, WARREN_BASE=os.path.join(work, "warren"),
                        WARREN_NODE_PORT=str(WARREN_PORT), WARREN_NODENAME="compare-warren")
        self.port = WARREN_PORT

    def start(self):
        run([os.path.join(TARGET, "release", "warren-server"), "-detached"], env=self.env)
        wait_port(self.port)

    def pid(self):
        path = os.path.join(self.env["WARREN_BASE"], f"compare-warren@{socket.gethostname().split('.')[0]}",
                            "node.json")
        import json
        with open(path) as f:
            return json.load(f)["pid"]

    def stop(self):
        subprocess.run([os.path.join(TARGET, "release", "warrenctl"), "-n", "compare-warren", "stop"],
                       env=self.env, capture_output=True)
        wait_port_free(self.port)


def ensure_rabbit_installed():
    if not os.path.exists(os.path.join(RABBIT_BIN, "rabbitmq-server")):
        print("installing rabbitmq-server with apt-get ...", flush=True)
        run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", "rabbitmq-server"],
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)


class Rabbit:
    name = "RabbitMQ"

    def __init__(self, work):
        base = os.path.join(work, "rabbit")
        os.makedirs(os.path.join(base, "home"), exist_ok=True)
        with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
            f.write("loopback_users = none\n")
        self.env = dict(os.environ, HOME=os.path.join(base, "home"),
                        RABBITMQ_MNESIA_BASE=os.path.join(base, "mnesia"),
                        RABBITMQ_LOG_BASE=os.path.join(base, "log"),
                        RABBITMQ_NODENAME=RABBIT_NODE, RABBITMQ_NODE_PORT=str(RABBIT_PORT),
                        RABBITMQ_DIST_PORT=str(RABBIT_PORT + 20000),
                        RABBITMQ_CONFIG_FILE=os.path.join(base, "rabbitmq"))
        self.port = RABBIT_PORT

    def start(self):
        ensure_rabbit_installed()
        run([os.path.join(RABBIT_BIN, "rabbitmq-server"), "-detached"], env=self.env)
        deadline = time.time() + 120
        while time.time() < deadline:
            r = subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", RABBIT_NODE,
                                "await_startup"], env=self.env, capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(1)
        wait_port(self.port)

    def pid(self):
        out = subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", RABBIT_NODE, "eval",
                              "os:getpid()."], env=self.env, capture_output=True, text=True)
        digits = re.sub(r"[^0-9]", "", out.stdout)
        if not digits:
            raise SystemExit(f"cannot find RabbitMQ's pid: {out.stdout} {out.stderr}")
        return int(digits)

    def stop(self):
        subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", RABBIT_NODE, "stop"],
                       env=self.env, capture_output=True)
        wait_port_free(self.port)


SUMMARY = re.compile(r"sending rate avg: (\d+) msg/s, confirmed avg: (\d+) msg/s, "
                     r"receiving rate avg: (\d+) msg/s, .*latency: (\S+)")
SETUP = re.compile(r"setup: (\d+) ms")
QUEUED = re.compile(r"queued: (\d+) messages")

# One run per (broker, arguments): scenarios reading two figures of one run share it.
_runs = {}


def perf(broker, args, seconds=None):
    key = (broker.name, tuple(args))
    if key in _runs:
        return _runs[key]
    uri = f"amqp://guest:guest@127.0.0.1:{broker.port}/%2f"
    out = subprocess.run([os.path.join(TARGET, "release", "warren-perf"), "--uri", uri,
                          "-z", str(seconds or SECONDS)] + args, capture_output=True, text=True,
                         env=dict(os.environ, RUST_BACKTRACE="0"))
    r = {}
    for line in out.stdout.splitlines():
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
    if "sent" not in r or out.returncode != 0:
        raise SystemExit(f"warren-perf {args} against {broker.name} failed:\n{out.stdout}\n{out.stderr}")
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
        run([os.path.join(TARGET, "release", "warrenctl"), "-n", self.nodes[i]] + list(args),
            env=self.env_for(i), stdout=subprocess.DEVNULL)

    def start(self):
        for i in range(3):
            run([os.path.join(TARGET, "release", "warren-server"), "-detached"],
                env=self.env_for(i))
            wait_port(self.ports[i])
        join_to_first(self)

    def stop(self):
        for i in range(3):
            subprocess.run([os.path.join(TARGET, "release", "warrenctl"), "-n", self.nodes[i],
                            "stop"], env=self.env_for(i), capture_output=True)
            wait_port_free(self.ports[i])


class RabbitCluster(Rabbit):
    """Three RabbitMQ nodes on this machine, clustered with rabbitmqctl join_cluster."""
    name = "RabbitMQ"

    def __init__(self, work):
        self.base = os.path.join(work, "rabbit-cluster")
        os.makedirs(os.path.join(self.base, "home"), exist_ok=True)
        with open(os.path.join(self.base, "rabbitmq.conf"), "w") as f:
            f.write("loopback_users = none\n")
        self.nodes = [f"compare-rabbit-{i}@localhost" for i in (1, 2, 3)]
        self.ports = [5831, 5832, 5833]
        self.port = self.ports[0]

    def env_for(self, i):
        # One HOME: the nodes and rabbitmqctl share its Erlang cookie.
        return dict(os.environ, HOME=os.path.join(self.base, "home"),
                    RABBITMQ_MNESIA_BASE=os.path.join(self.base, f"mnesia-{i}"),
                    RABBITMQ_LOG_BASE=os.path.join(self.base, f"log-{i}"),
                    RABBITMQ_NODENAME=self.nodes[i], RABBITMQ_NODE_PORT=str(self.ports[i]),
                    RABBITMQ_DIST_PORT=str(self.ports[i] + 20000),
                    RABBITMQ_CONFIG_FILE=os.path.join(self.base, "rabbitmq"))

    def ctl(self, i, *args):
        run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.nodes[i]] + list(args),
            env=self.env_for(i), stdout=subprocess.DEVNULL)

    def start(self):
        ensure_rabbit_installed()
        for i in range(3):
            run([os.path.join(RABBIT_BIN, "rabbitmq-server"), "-detached"], env=self.env_for(i))
        for i in range(3):
            deadline = time.time() + 120
            while time.time() < deadline:
                r = subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.nodes[i],
                                    "await_startup"], env=self.env_for(i), capture_output=True)
                if r.returncode == 0:
                    break
                time.sleep(1)
            wait_port(self.ports[i])
        join_to_first(self)

    def stop(self):
        for i in range(3):
            subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.nodes[i], "stop"],
                           env=self.env_for(i), capture_output=True)
            wait_port_free(self.ports[i])


# Scenarios on three nodes of each broker (all six processes on this machine's cores).
CLUSTER_SCENARIOS = [
    ("3 nodes: quorum queue, 1 KiB, confirms 1000, prefetch 1000 [raw]: confirmed msg/s",
     lambda b: perf(b, ["--raw", "-s", "1024", "--quorum-queue", "-c", "1000", "-q", "1000",
                        "-u", "qq1", "-e", "cmp-direct"])["confirmed"]),
]


def main():
    run(["cargo", "build", "--release", "-q", "-p", "warren", "--bin", "warren-server",
         "--bin", "warrenctl", "-p", "warren-tests", "--bin", "warren-perf"], cwd=ROOT)
    work = tempfile.mkdtemp(prefix="warren-compare-")
    # BENCH_ONLY=cluster runs the three-node scenarios alone.
    only_cluster = os.environ.get("BENCH_ONLY") == "cluster"
    brokers = [] if only_cluster else [Rabbit(work), Warren(work)]
    scenarios = [] if only_cluster else list(SCENARIOS)
    results = {}
    load_before = os.getloadavg()
    started = time.time()
    try:
        for b in [RabbitCluster(work), WarrenCluster(work)]:
            print(f"{b.name}: starting three clustered nodes ...", flush=True)
            b.start()
            try:
                for name, f in CLUSTER_SCENARIOS:
                    print(f"{b.name}: {name} ...", flush=True)
                    results[(b.name, name)] = f(b)
                    print(f"    {results[(b.name, name)]:,.0f}", flush=True)
            finally:
                b.stop()
        scenarios += [(name, f, False) for name, f in CLUSTER_SCENARIOS]
        for b in brokers:
            running = False
            for name, f, fresh in SCENARIOS:
                if running and fresh:
                    b.stop()
                    running = False
                if not running:
                    b.start()
                    running = True
                print(f"{b.name}: {name} ...", flush=True)
                results[(b.name, name)] = f(b)
                print(f"    {results[(b.name, name)]:,.0f}", flush=True)
            b.stop()
    finally:
        for b in brokers:
            b.stop()
        shutil.rmtree(work, ignore_errors=True)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    load_after = os.getloadavg()
    rabbit_version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"],
                                    capture_output=True, text=True).stdout.strip() or "?"
    lines = [f"Warren vs RabbitMQ {rabbit_version} on {os.cpu_count()} cores ({cpu}); broker and "
             f"load tool share them; {SECONDS} s per scenario; load tool: warren-perf "
             f"([raw] client or [lapin]); whole run {time.time() - started:.0f} s; load average "
             f"{load_before[0]:.1f} before, {load_after[0]:.1f} after", "",
             "| scenario | RabbitMQ | Warren | Warren advantage |", "|---|---|---|---|"]
    for name, _, _ in scenarios:
        r, w = results[("RabbitMQ", name)], results[("Warren", name)]
        lower_better = "lower is better" in name
        ratio = (r / w if lower_better else w / r) if r and w else float("nan")
        lines.append(f"| {name} | {r:,.0f} | {w:,.0f} | {ratio:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(TARGET, exist_ok=True)
    with open(os.path.join(TARGET, "bench-compare.txt"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
