#!/usr/bin/env python3
"""Checks the import rules of host/src (run by .ci/run; `python3 tests/layers.py` by hand).

The rules (docs/architecture.md, "Layers"):
  1. No import cycles between the top-level modules of host/src.
  2. Nothing below the wire layer imports `amqp`: only `node` (which wires the node together)
     may.

A module "imports" another when its non-test code names `crate::<other>` (in a `use` or a
path). Comments and `#[cfg(test)] mod ... {}` blocks at the end of a file are not code.

Every edge that breaks a rule fails the check; there are no exceptions. `--graph` prints every
edge between top-level modules.
"""

import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "host", "src")

# Modules allowed to import the wire layer.
WIRE_USERS = {"node"}



def modules():
    names = set()
    for entry in os.listdir(ROOT):
        if entry in ("lib.rs", "main.rs", "bin"):
            continue
        names.add(entry[:-3] if entry.endswith(".rs") else entry)
    return names


def code_of(path):
    """The file's code: no comments, no trailing test module."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    m = re.search(r"^#\[cfg\(test\)\]\s*\nmod \w+ \{", src, re.M)
    if m:
        src = src[:m.start()]
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    src = re.sub(r"//[^\n]*", "", src)
    return src


def edges():
    mods = modules()
    found = defaultdict(set)  # (from, to) -> files
    for dirpath, _, files in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        if rel_dir.split(os.sep)[0] == "bin":
            continue
        for name in files:
            if not name.endswith(".rs"):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, name))
            top = rel.split(os.sep)[0]
            top = top[:-3] if top.endswith(".rs") else top
            if top == "lib":
                continue
            src = code_of(os.path.join(dirpath, name))
            targets = set(re.findall(r"\bcrate::(\w+)", src))
            for group in re.findall(r"\bcrate::\{([^}]*)\}", src, re.S):
                targets.update(re.findall(r"(?:^|,)\s*(\w+)", group))
            for t in targets:
                if t != top and t in mods:
                    found[(top, t)].add(rel)
    return found


def cyclic_edges(graph_edges):
    """Edges whose two ends lie on one cycle (in one strongly connected component)."""
    succ = defaultdict(set)
    for a, b in graph_edges:
        succ[a].add(b)

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for n in succ[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    reachable = {n: reach(n) for n in {x for e in graph_edges for x in e}}
    return {(a, b) for a, b in graph_edges if a in reachable[b]}


def main():
    found = edges()
    if "--graph" in sys.argv[1:]:
        for a, b in sorted(found):
            print(f"{a} -> {b}    ({', '.join(sorted(found[(a, b)]))})")
        return 0
    bad = cyclic_edges(set(found)) | {
        (a, b) for (a, b) in found if b == "amqp" and a not in WIRE_USERS}
    new = sorted(bad)
    for a, b in new:
        why = "imports the wire layer" if b == "amqp" else "closes an import cycle"
        print(f"layers: {a} -> {b} {why}: {', '.join(sorted(found[(a, b)]))}")
    if new:
        return 1
    print(f"layers: ok ({len(found)} edges between modules, no cycle, only node imports amqp)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
