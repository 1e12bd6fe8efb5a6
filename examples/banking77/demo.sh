#!/usr/bin/env bash
# The Banking77 demo: check the data, fine-tune SmolLM2-135M-Instruct with LoRA, and evaluate it
# against zero-shot and few-shot prompting of the same base model. Run it with `make demo`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-runs/banking77}"
bin="${SPECIALIZE_BIN:-.venv/bin/specialize}"

echo "== 1. Check the data (all 10,003 training and 3,080 test rows); the time estimate is for"
echo "   the config's training run, from a short calibration measured on this machine"
"$bin" check "$here/train.csv" --test "$here/test.csv" --input-field text --output-field category \
  --config "$here/config.yaml" || {
  code=$?; [ "$code" -eq 2 ] && { echo "the data has errors; stopping"; exit 2; }; exit "$code"; }

echo
echo "== 2. Train and evaluate. Sized for a 2-core CPU (see $here/config.yaml):"
echo "   1,200 training rows (stratified, ~15 per intent), 2 epochs of LoRA r=32;"
echo "   200 stratified test rows for each of zero-shot, few-shot (k=5) and fine-tuned."
if [ -e "$out" ]; then
  echo "   (removing the previous demo run in $out)"
  rm -rf "$out"
fi
"$bin" run "$here/config.yaml" --out "$out"

echo
echo "== 3. Try it:"
echo "   $bin generate $out \"I still haven't received my card\""
"$bin" generate "$out" "I still haven't received my card" "Why was I charged a fee for my transfer?"

echo
echo "== 4. Register the adapter for serving: specialize adapters add banking77 $out"
"$bin" adapters add banking77 "$out"
echo "   Serve it with: $bin serve   (then query model=\"banking77\" with any OpenAI client; see README)"
