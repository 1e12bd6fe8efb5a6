#!/usr/bin/env bash
# DPO on top of the Banking77 demo run, from its own mistakes: the demo run answers training rows it
# has not seen; every wrong answer becomes a pair (chosen = the true intent, rejected = what it
# said); DPO then trains the demo run's adapter on those pairs, with that adapter as the reference,
# and the evaluation compares the result with its parent on the same 200 held-out rows (accuracy
# with 95% intervals, McNemar's paired test, and the implicit-reward accuracy on held-out pairs).
#
#   bash examples/banking77/dpo.sh [RUN] [OUT]     (defaults: runs/banking77, runs/banking77-dpo)
#
# Needs the demo run (make demo). Sized for a 2-core CPU like the demo: at most 2,000 rows answered,
# one epoch over the pairs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
run="${1:-runs/banking77}"
out="${2:-runs/banking77-dpo}"
pairs="$out-pairs"
bin="${SPECIALIZE_BIN:-.venv/bin/specialize}"
python="${PYTHON:-.venv/bin/python}"

if [ ! -f "$run/run.json" ]; then
  echo "$run: no finished run; train the demo first (make demo)"; exit 2
fi

echo "== 1. Pairs from $run's own wrong answers on unseen training rows"
"$python" "$here/make_pairs.py" "$run" --out "$pairs" --max-rows "${MAX_ROWS:-2000}"

echo
echo "== 2. Check the pairs (file:line errors, duplicates, leakage into the test pairs, lengths)"
"$bin" check "$pairs/pairs.jsonl" --test "$pairs/test_pairs.jsonl" --config "$pairs/dpo.yaml" --no-calibrate || {
  code=$?; [ "$code" -eq 2 ] && { echo "the pairs have errors; stopping"; exit 2; }; exit "$code"; }

echo
echo "== 3. DPO on top of $run (its adapter is the start and the reference)"
if [ -e "$out" ]; then
  echo "   (removing the previous DPO run in $out)"
  rm -rf "$out"
fi
"$bin" train --config "$pairs/dpo.yaml" --out "$out"

echo
echo "== 4. Evaluate: the DPO run against its parent on the parent's held-out rows"
"$bin" eval "$out"

echo
echo "== 5. Before / after"
"$python" - "$out" <<'PY'
import sys
from specialize.run_dir import RunDir

report = RunDir(__import__("pathlib").Path(sys.argv[1])).eval_report()
pref = report.preference
parent, tuned = report.contender(pref.parent_contender), report.tuned()
for name, c in (("before (parent)", parent), ("after (DPO)", tuned)):
    ci = c.quality.interval()
    print(f"{name:16} {c.quality.primary} {ci.value:.3f} [{ci.ci_low:.3f}, {ci.ci_high:.3f}]")
t = pref.task_change
print(f"change {t.mean_diff:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], McNemar p = {t.p_value:.3g} (n = {t.n})")
r = pref.implicit_reward_accuracy
print(f"implicit-reward accuracy on held-out pairs {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]")
PY
