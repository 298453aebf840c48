#!/usr/bin/env python3
"""Side-by-side comparison of Warren and RabbitMQ on this machine, in one command:

    python3 tests/bench/compare.py                # print the table, write target/bench-compare.txt
    python3 tests/bench/compare.py --write-docs   # ... and put it into docs/benchmarks.md

Environment: BENCH_SECONDS (10) seconds per throughput scenario, BENCH_RUNS (3) rounds,
BENCH_ONLY=cluster for the three-node scenarios alone.

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
RUNS = max(1, int(os.environ.get("BENCH_RUNS", "3")))
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN, END = "<!-- compare.py: begin -->", "<!-- compare.py: end -->"
WARREN_PORT, RABBIT_PORT = 5801, 5802
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


SUMMARY = re.compile(r"sending rate avg: (\d+) msg/s, confirmed avg: (\d+) msg/s, "
                     r"receiving rate avg: (\d+) msg/s, .*latency: (\S+)")
SETUP = re.compile(r"setup: (\d+) ms")
QUEUED = re.compile(r"queued: (\d+) messages")

# One run per (broker, arguments) and round: scenarios reading two figures of one run share
# it. Emptied whenever a broker starts a round.
_runs = {}


def perf(broker, args, seconds=None):
    key = (broker.name, tuple(args))
    if key in _runs:
        return _runs[key]
    uri = f"amqp://guest:guest@127.0.0.1:{broker.port}/%2f"
    out = subprocess.run([warren_bin("warren-perf"), "--uri", uri,
                          "-z", str(SECONDS if seconds is None else seconds)] + args,
                         capture_output=True, text=True, env=dict(os.environ, RUST_BACKTRACE="0"))
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

    def pid(self):
        return rabbit_pid(self.nodes[0], self.env_for(0))

    def stop(self):
        for i in range(3):
            subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.nodes[i], "stop"],
                           env=self.env_for(i), capture_output=True)
            wait_port_free(self.ports[i])


# Scenarios on three nodes of each broker (all six processes on this machine's cores).
CLUSTER_SCENARIOS = [
    ("3 nodes: quorum queue, 1 KiB, confirms 1000, prefetch 1000 [raw]: confirmed msg/s",
     lambda b: perf(b, ["--raw", "-s", "1024", "--quorum-queue", "-c", "1000", "-q", "1000",
                        "-u", "qq1", "-e", "cmp-direct"])["confirmed"], True),
]


def one_round(broker, scenarios, results, label):
    """Every scenario once against `broker`, from an empty data directory; restarts before
    each scenario marked fresh. Stops the broker at the end."""
    _runs.clear()
    broker.wipe()
    running = False
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
            print(f"    {value:,.0f}", flush=True)
    finally:
        broker.stop()


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


def spread(values):
    """`median (min–max)` of one broker's runs; a single run is printed alone."""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} ({min(values):,.0f}–{max(values):,.0f})"


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


def main():
    args = sys.argv[1:]
    if any(a not in ("--write-docs",) for a in args):
        raise SystemExit("usage: python3 tests/bench/compare.py [--write-docs]")
    run(["cargo", "build", "--release", "-q", "-p", "warren", "--bin", "warren-server",
         "--bin", "warrenctl", "-p", "warren-tests", "--bin", "warren-perf"], cwd=ROOT)
    work = tempfile.mkdtemp(prefix="warren-compare-")
    # BENCH_ONLY=cluster runs the three-node scenarios alone.
    only_cluster = os.environ.get("BENCH_ONLY") == "cluster"
    singles = [] if only_cluster else [Rabbit(work), Warren(work)]
    clusters = [RabbitCluster(work), WarrenCluster(work)]
    scenarios = ([] if only_cluster else list(SCENARIOS)) + list(CLUSTER_SCENARIOS)
    results = {}
    load_before = os.getloadavg()
    started = time.time()
    try:
        for r in range(RUNS):
            # Round 1 starts with RabbitMQ, round 2 with Warren, and so on.
            step = 1 if r % 2 == 0 else -1
            label = f"[round {r + 1}/{RUNS}]"
            for b in singles[::step]:
                one_round(b, SCENARIOS, results, label)
            for b in clusters[::step]:
                print(f"{label} {b.name}: three clustered nodes", flush=True)
                one_round(b, CLUSTER_SCENARIOS, results, label)
    finally:
        for b in singles + clusters:
            b.stop()
        shutil.rmtree(work, ignore_errors=True)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    load_after = os.getloadavg()
    rabbit_version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"],
                                    capture_output=True, text=True).stdout.strip() or "?"
    commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "?"
    runs = f"{RUNS} runs" if RUNS > 1 else "1 run"
    lines = [f"Warren ({commit}: release build, default config) vs RabbitMQ {rabbit_version} "
             f"(Debian package, default config but `loopback_users = none`, Erlang VM flags "
             f"`{RABBIT_ERL_ARGS}`) on "
             f"{os.cpu_count()} cores ({cpu}); broker and load tool share them; {runs} of each "
             f"scenario per broker, alternating which broker goes first; {SECONDS} s per "
             f"throughput scenario; load tool: warren-perf ([raw] client or [lapin]); whole run "
             f"{time.time() - started:.0f} s; load average {load_before[0]:.1f} before, "
             f"{load_after[0]:.1f} after", "",
             "| scenario | RabbitMQ: median (range) | Warren: median (range) "
             "| Warren advantage (range) |", "|---|---|---|---|"]
    for name, _, _ in scenarios:
        rabbit, warren = results[("RabbitMQ", name)], results[("Warren", name)]
        lines.append(f"| {name} | {spread(rabbit)} | {spread(warren)} | "
                     f"{ratio_text(rabbit, warren, 'lower is better' in name)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(TARGET, exist_ok=True)
    with open(os.path.join(TARGET, "bench-compare.txt"), "w") as f:
        f.write(text)
    if "--write-docs" in args:
        write_docs(text)


if __name__ == "__main__":
    main()
