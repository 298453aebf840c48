#!/usr/bin/env bash
# Builds the x-modulus-hash exchange type (Python) into a WebAssembly component.
#
#   ./build.sh [OUT_DIR]     # writes OUT_DIR/x-modulus-hash.wasm (default: this directory)
#
# PYTHON picks the interpreter that runs componentize-py (default python3).
# componentize-py generates the `wit_world` bindings itself while it builds;
# the build runs on a copy of the sources in a temporary directory, so neither
# bindings nor __pycache__ land in the source tree.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$here}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
python="${PYTHON:-python3}"

# Runs componentize-py through the interpreter, so a PATH without pip's
# script directory still works.
componentize_py() {
    "$python" -c 'import sys, componentize_py; sys.argv[0] = "componentize-py"; sys.exit(componentize_py.script())' "$@"
}

if ! componentize_py --version 2>/dev/null | grep -q '^componentize-py 0\.25\.'; then
    "$python" -m pip install 'componentize-py==0.25.*'
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here"/app.py "$here"/exchange_type.py "$here"/logic.py "$work"/

start=$(date +%s.%N)
componentize_py -d "$repo/wit" -w warren:plugin/exchange-plugin@0.1.0 \
    componentize app -p "$work" -o "$out/x-modulus-hash.wasm"
end=$(date +%s.%N)
printf 'built %s (%s bytes, %.1f s)\n' "$out/x-modulus-hash.wasm" \
    "$(wc -c <"$out/x-modulus-hash.wasm")" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')"
