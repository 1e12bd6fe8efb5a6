"""`specialize retrain NAME`: a challenger version from new labelled rows, promoted only if it wins.

The steps, each reusing the piece that owns it:

1. the current version of NAME (registry pointer) and the run it was trained in (its config,
   its splits: the parent's training rows and its frozen test split);
2. the new rows (`loop.rows`): read, refused when they leak into the frozen test split, merged
   with the parent's training and validation rows without duplicates, a slice held out;
3. the challenger trained with the parent's config on the merged rows, the frozen test split as
   its test file (`train.sft.train`, then the drift profile as `specialize train` writes it);
4. both versions answer the frozen test split and the held-out new rows (`loop.compare`), and
   the rule of `loop.decisions.decide` gives the verdict;
5. the challenger is registered as the next version in any case (with its lineage), made current
   only when promoted; the decision goes to the registry and to `<out>/decision.json`.

Layout of the retrain directory `<out>` (default `runs/<name>-retrain-<UTC time>`):

    inputs/train.jsonl     the merged training rows (normal form)
    inputs/test.jsonl      the parent's frozen test split
    new_holdout.jsonl      the new rows held out for the comparison
    run/                   the challenger's run directory
    decision.json          loop.decisions.RetrainDecision
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from specialize.config import RunConfig
from specialize.data.example import Example
from specialize.data.prepare import read_splits
from specialize.errors import ConfigError, RunError
from specialize.loop.compare import answers, compare_set, reply_budget
from specialize.loop.decisions import RetrainDecision, RowCounts, StepSeconds, decide
from specialize.loop.rows import merge_rows, read_logged_rows, read_new_rows, read_reviewed_rows, write_rows
from specialize.registry import AdapterRecord, AdapterRegistry, DecisionEntry, Lineage, RegistryError
from specialize.run_dir import RunDir

log = logging.getLogger(__name__)


@dataclass
class NewRows:
    """Where the new labelled rows come from (any combination)."""

    data: list[Path] = field(default_factory=list)  # files in the parent's training format
    reviewed: list[Path] = field(default_factory=list)  # the studio's exported examples
    request_log: Path | None = None  # logged requests ...
    labels: Path | None = None  # ... and the labels supplied for them

    def read(self, config: RunConfig) -> list[Example]:
        if (self.request_log is None) != (self.labels is None):
            raise ConfigError("--from-log needs --labels (the replies to learn for the logged requests)")
        rows: list[Example] = []
        for path in self.data:
            rows += read_new_rows(path, config)
        for path in self.reviewed:
            rows += read_reviewed_rows(path, config)
        if self.request_log is not None and self.labels is not None:
            rows += read_logged_rows(self.request_log, self.labels)
        if not rows and not (self.data or self.reviewed or self.request_log):
            raise ConfigError(
                "no new rows given: pass --new DATA, --from-review FILE or --from-log LOG --labels FILE"
            )
        return rows


@dataclass
class RetrainOptions:
    # How much worse on the old test split is tolerated (the 95% lower bound of the difference).
    # Not smaller by default: on a test split of a few hundred rows the interval of a paired
    # difference is itself several points wide, so a tighter margin would keep out even an
    # equally good challenger; a larger frozen test split affords a tighter margin.
    margin: float = 0.05
    confidence: float = 0.95
    holdout_fraction: float = 0.3  # of the new rows, kept out of training to judge on
    out: Path | None = None
    max_steps: int | None = None  # training overrides of the parent's config
    epochs: float | None = None
    promote: bool = True  # False: decide and register, never switch the current version
    # Start the challenger from the current version's adapter (method.from_run) rather than a
    # new one: it keeps what the parent learnt and usually needs fewer steps on the merged rows.
    from_parent: bool = False
    resamples: int = 2000

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise ConfigError(f"margin must be in [0, 1), got {self.margin}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout fraction must be in (0, 1), got {self.holdout_fraction}")


def parent_run(record: AdapterRecord) -> RunDir:
    """The run directory a registered version was trained in."""
    where = Path(record.run_dir or record.source)
    # A version added before lineage was recorded names only its source: the run, or its adapter/.
    candidates = [where, where.parent] if record.run_dir is None and where.name == "adapter" else [where]
    run = next((RunDir(c) for c in candidates if RunDir(c).config_file.is_file()), None)
    if run is None:
        raise RegistryError(
            f"'{record.name}' v{record.version} was added from {where}, which is not a run directory; "
            "retraining needs the run it was trained in (its config and splits)"
        )
    if not run.finished:
        raise RegistryError(
            f"{run.path}: the run of '{record.name}' v{record.version} has not finished training"
        )
    return run


def retrain(
    name: str,
    new: NewRows,
    options: RetrainOptions | None = None,
    *,
    registry: AdapterRegistry | None = None,
) -> RetrainDecision:
    """Train a challenger for `name` on its training rows plus `new`; promote it if it wins."""
    options = options or RetrainOptions()
    store = registry or AdapterRegistry()
    current = store.current(name)
    parent = parent_run(current)
    config = parent.config()
    seconds = StepSeconds()

    began = time.perf_counter()
    splits = read_splits(parent)
    if not splits.test:
        raise RunError(f"{parent.path}: the parent run has no test split to compare on")
    merged = merge_rows(
        [*splits.train, *splits.val],
        splits.test,
        new.read(config),
        holdout_fraction=options.holdout_fraction,
        seed=config.seed,
        test_file=str(parent.split_file("test")),
    )
    out = options.out or Path("runs") / f"{name}-retrain-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty; choose another --out")
    train_file = write_rows(merged.train, out / "inputs" / "train.jsonl")
    test_file = write_rows(splits.test, out / "inputs" / "test.jsonl")
    write_rows(merged.holdout, out / "new_holdout.jsonl")
    challenger_config = _challenger_config(config, train_file, test_file, options, parent)
    seconds.merge = time.perf_counter() - began

    began = time.perf_counter()
    run = _train(challenger_config, out / "run")
    seconds.train = time.perf_counter() - began

    began = time.perf_counter()
    record = run.record()
    from specialize.models.load import load_tokenizer

    budget = reply_budget(
        load_tokenizer(challenger_config.model.base), [e.completion or "" for e in merged.train]
    )
    sets = {"old_test": splits.test, "new_rows": merged.holdout}
    before = answers(parent.path, sets, max_new_tokens=budget, batch_size=config.eval.batch_size)
    after = answers(run.path, sets, max_new_tokens=budget, batch_size=config.eval.batch_size)
    labels = sorted(set(record.labels or []) | set(parent.record().labels or [])) or None
    compared = {
        key: compare_set(
            record.task,
            rows,
            before[key],
            after[key],
            labels,
            confidence=options.confidence,
            resamples=options.resamples,
            seed=config.seed,
        )
        for key, rows in sets.items()
    }
    outcome, reason = decide(compared["old_test"], compared["new_rows"], options.margin)
    seconds.compare = time.perf_counter() - began

    began = time.perf_counter()
    added = store.add(
        name,
        run.path,
        lineage=Lineage(parent_version=current.version, rows_added=merged.added),
        make_current=False,
    )
    if outcome == "promoted" and options.promote:
        store.promote(name, added.version, reason=f"retrain: won against v{current.version}")
    elif outcome == "promoted":
        reason += " (not switched: promotion was turned off)"
    seconds.registry = time.perf_counter() - began
    decision = RetrainDecision(
        name=name,
        outcome=outcome if options.promote else "kept",
        reason=reason,
        current_version=current.version,
        challenger_version=added.version,
        challenger_run=str(run.path.resolve()),
        parent_run=str(parent.path.resolve()),
        margin=options.margin,
        confidence=options.confidence,
        from_parent=options.from_parent,
        old_test=compared["old_test"],
        new_rows=compared["new_rows"],
        rows=RowCounts(
            parent_train=merged.parent_rows,
            new_given=merged.given,
            duplicates=merged.duplicates,
            corrected=merged.corrected,
            added=merged.added,
            holdout=len(merged.holdout),
            challenger_train=record.examples.train,
        ),
        new_rows_sha256=merged.fingerprint,
        seconds=seconds,
    )
    report = decision.write(out / "decision.json")
    store.record_decision(
        DecisionEntry(name, decision.outcome, reason, added.version, current.version, str(report.resolve()))
    )
    log.info("%s v%d vs v%d: %s", name, added.version, current.version, reason)
    return decision


def _challenger_config(
    config: RunConfig, train_file: Path, test_file: Path, options: RetrainOptions, parent: RunDir
) -> RunConfig:
    """The parent's config over the merged rows. The rows are in the normal form already (system
    prompt and template applied), so the field names are dropped; the caps were applied to the
    parent's rows, so they are dropped too (a cap would now cut new rows or the frozen test)."""
    changed = config.model_copy(deep=True)
    if options.from_parent:
        if not config.method.adapter:
            raise ConfigError(
                f"--from-parent continues the parent's LoRA adapter, but {parent.path} is a "
                f"'{config.method.kind}' run; retrain without --from-parent"
            )
        changed.method.from_run = str(parent.path.resolve())
    changed.data.train = str(train_file.resolve())
    changed.data.test = str(test_file.resolve())
    changed.data.input_field = None
    changed.data.output_field = None
    changed.data.max_train_examples = None
    changed.data.max_test_examples = None
    if options.max_steps is not None:
        changed.train.max_steps = options.max_steps
    if options.epochs is not None:
        changed.train.epochs = options.epochs
    return changed


def _train(config: RunConfig, out: Path) -> RunDir:
    """Train as `specialize train` does: the run, then its drift reference profile."""
    from specialize.models.load import load_tokenizer
    from specialize.monitor.profile import write_profile
    from specialize.train.sft import train

    result = train(config, out)
    try:
        write_profile(result.run, load_tokenizer(config.model.base))
    except Exception as exc:  # noqa: BLE001 - as in api.train: recoverable with `specialize profile`
        log.warning("could not write profile.json (%s); run `specialize profile %s`", exc, result.run.path)
    return result.run
