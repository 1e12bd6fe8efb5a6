"""The evaluation's generation passes vs the serving engine on the same prompts: time and replies.

    python benchmarks/engine_vs_eval.py [--run RUN] [--rows 48]

Why it exists: "one inference core" would run the evaluation's passes on the batching engine
(`specialize.batching.Engine`, what `specialize serve` runs). Whether that is a win depends on
the prompts: the fine-tuned model's short prompts, or the baselines' long instructions (the
zero-shot prompt lists every label; the few-shot one adds retrieved examples). For every
generating contender of a trained run (default: the demo's `runs/banking77`, which `make demo`
makes; without it the benchmark says so and stops), on the run's first test rows, freely:

(a) `inference.generate` at the evaluation's batch size, as `specialize eval` runs it (HF
    `generate` on the PeftModel, the shared prefix prefilled once);
(b) the engine on a fresh copy of the base with the run's adapter for the fine-tuned rows and
    none for the baselines, every request submitted at once, `max_batch` = the same batch size.

Printed per contender: seconds of each, the ratio, and how many replies are identical. The last
line starts with RESULT.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run as a plain script: specialize from this tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "banking77"))
    parser.add_argument("--rows", type=int, default=48)
    args = parser.parse_args()
    if not (Path(args.run) / "run.json").is_file():
        print(f"skipped: no trained run at {args.run} (make demo makes one, or pass --run)")
        return

    from specialize.batching import AdapterDir, Engine, ResidentAdapters, SamplingParams
    from specialize.data.preference import reference_rows
    from specialize.data.prepare import read_splits
    from specialize.evaluate.contenders import build_contenders
    from specialize.evaluate.runner import generation_setup
    from specialize.inference import end_of_turn_ids, generate, load_run
    from specialize.models.chat import prompt_ids
    from specialize.models.load import inference_dtype, load_model

    trained = load_run(args.run)
    splits = read_splits(trained.run)
    test = reference_rows(splits.test)[: args.rows]
    setup = generation_setup(trained, splits.train)
    batch = trained.config.eval.batch_size
    contenders = build_contenders(
        trained, splits.train, test, kind=setup.kind, labels=setup.labels, max_new_tokens=setup.max_new_tokens
    )
    base = load_model(trained.config.model.base, dtype=inference_dtype(trained.config.model.dtype))
    engine = Engine(
        base.model,
        base.tokenizer,
        adapters=ResidentAdapters(base.model, capacity=1),
        max_batch=batch,
        max_queue=max(len(test), 1),
        eos_token_ids=end_of_turn_ids(base),
    )
    adapter = AdapterDir(key=f"bench:{trained.run.weights_dir()}", path=trained.run.weights_dir())
    params = SamplingParams(max_tokens=setup.max_new_tokens, temperature=0.0, stop=tuple(setup.stop))
    print(
        f"{args.run}: {len(test)} test rows, batch {batch}, max_new_tokens {setup.max_new_tokens}, "
        f"{base.model.dtype}"
    )
    print(
        f"{'contender':16s} {'prompt tok':>10s} {'eval s':>7s} {'engine s':>8s} {'ratio':>6s}  same replies"
    )
    engine.start()
    total_eval = total_engine = 0.0
    same_total = rows_total = 0
    try:
        for contender in contenders:
            with contender.context():
                began = time.perf_counter()
                ours = generate(
                    contender.loaded,
                    contender.conversations,
                    max_new_tokens=setup.max_new_tokens,
                    batch_size=batch,
                    stop=setup.stop,
                )
                eval_seconds = time.perf_counter() - began
            prompts = [prompt_ids(base.tokenizer, m) for m in contender.conversations]
            served_by = adapter if contender.role == "fine-tuned" else None
            engine.generate(prompts[0], params, served_by)  # loads the adapter: not timed
            began = time.perf_counter()
            handles = [engine.submit(p, params, served_by) for p in prompts]
            replies = [h.wait().text.strip() for h in handles]
            engine_seconds = time.perf_counter() - began
            same = sum(a == g.text.strip() for a, g in zip(replies, ours, strict=True))
            total_eval += eval_seconds
            total_engine += engine_seconds
            same_total += same
            rows_total += len(replies)
            mean_prompt = sum(map(len, prompts)) / len(prompts)
            print(
                f"{contender.name[:16]:16s} {mean_prompt:10.0f} {eval_seconds:7.1f} {engine_seconds:8.1f} "
                f"{engine_seconds / eval_seconds:5.2f}x  {same}/{len(replies)}",
                flush=True,
            )
    finally:
        engine.stop(drain=False)
    print(
        f"RESULT the engine takes {total_engine / total_eval:.2f}x the evaluation's time for the same passes "
        f"({total_engine:.1f} vs {total_eval:.1f} s over {len(contenders)} contenders), "
        f"{same_total}/{rows_total} replies identical"
    )


if __name__ == "__main__":
    main()
