#!/usr/bin/env bash
# The loop demo: drift -> reviewed examples -> a new version, promoted only if it wins, swapped
# live. The first adapter is trained without five intents; simulated traffic then asks about
# them; `watch` sees the drift, finds the labelled rows, retrains, compares the challenger with
# the version in service (old test split and held-out new rows, paired test, 95% intervals) and
# promotes it; the running server follows without a restart. Sized for a few minutes on a 2-core CPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-runs/loop-demo}"
bin="${SPECIALIZE_BIN:-.venv/bin/specialize}"
py="${PYTHON:-.venv/bin/python}"
port="${PORT:-8077}"
export SPECIALIZE_REGISTRY="$out/registry"
name=banking77-loop

rm -rf "$out"
mkdir -p "$out"
step() { echo; echo "== $1  ($(date -u +%H:%M:%S))"; }

step "1. Data: Banking77 without five intents for the first adapter"
"$py" "$here/loop_data.py" split "$out/data"

step "2. Train the first adapter and register it"
start=$SECONDS
"$bin" train --config "$here/loop.yaml" --data "$out/data/train.csv" --test "$out/data/test.csv" --out "$out/v1"
"$bin" adapters add "$name" "$out/v1"
echo "   trained in $((SECONDS - start)) s"

step "3. Serve it, and send traffic that asks about the held-back intents"
"$bin" serve --port "$port" --request-log "$out/requests.sqlite" --adapter "$name" > "$out/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do sleep 1; done
"$py" "$here/loop_data.py" send "$out/data/traffic.txt" --url "http://127.0.0.1:$port/v1" --model "$name"
curl -s "http://127.0.0.1:$port/v1/models" | "$py" -c 'import json,sys; print([(m["id"], m.get("version")) for m in json.load(sys.stdin)["data"]])'

step "4. watch --once: drift alert, labelled rows present -> retrain -> promote if it wins"
start=$SECONDS
set +e
"$bin" watch "$name" --log "$out/requests.sqlite" --data "$out/data/labelled" --min-rows 20 --once --runs "$out/runs"
code=$?
set -e
echo "   watch exit code $code (0 no alert, 3 alert without retrain, 4 promoted, 5 kept) in $((SECONDS - start)) s"

step "5. The running server now serves the current version"
curl -s "http://127.0.0.1:$port/v1/models" | "$py" -c 'import json,sys; print([(m["id"], m.get("version")) for m in json.load(sys.stdin)["data"]])'
"$bin" adapters history "$name"
echo "   roll back with: SPECIALIZE_REGISTRY=$SPECIALIZE_REGISTRY $bin adapters rollback $name"
