#!/usr/bin/env python3
"""queue.declare latency against one node: 300 sequential durable declares with pika.

    python3 tests/bench/declare_latency.py PORT [LABEL]

Prints p50, p99 and mean. Run it against a single node and against each node of a
cluster to compare (docs/clustering.md has figures).
"""

import sys
import time
import uuid

import pika


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5672
    label = sys.argv[2] if len(sys.argv) > 2 else f"port {port}"
    conn = pika.BlockingConnection(pika.ConnectionParameters(port=port))
    ch = conn.channel()
    prefix = f"latency-{uuid.uuid4().hex[:8]}"
    lat = []
    for i in range(300):
        t = time.perf_counter()
        ch.queue_declare(f"{prefix}-{i}", durable=True)
        lat.append((time.perf_counter() - t) * 1000)
    for i in range(300):
        ch.queue_delete(f"{prefix}-{i}")
    conn.close()
    lat.sort()
    print(f"{label}: queue.declare latency over 300: p50 {lat[150]:.2f} ms, "
          f"p99 {lat[296]:.2f} ms, mean {sum(lat) / len(lat):.2f} ms")


if __name__ == "__main__":
    main()
