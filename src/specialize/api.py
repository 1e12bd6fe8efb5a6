"""The Python API: what a user does, one function each, with typed results.

    from specialize import check_data, train, evaluate, generate, serve, drift, export

Every CLI command is a thin shell over one of these; nothing the CLI can do is missing here.
Each function takes plain values (paths, configs) and returns a record (`DataReport`,
`TrainResult`, `EvalReport`, `Generation`, `DriftReport`, `ExportResult`), so that notebooks and
scripts get the same behaviour as the command line. Each function imports the layer it drives
when called, so that `import specialize` stays fast (torch and transformers load on first use).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from specialize.config import RunConfig, load_config, parse_config
from specialize.data.checks import DataReport, check_files
from specialize.data.formats import FormatSpec
from specialize.models.bundled import DEFAULT_MODEL
from specialize.records.eval import EvalReport
from specialize.train.callbacks import TrainProgress
from specialize.train.sft import TrainResult

log = logging.getLogger(__name__)

DEFAULT_PRICE_PER_HOUR = 0.10


def check_data(
    data: str | Path,
    *,
    test: str | Path | None = None,
    input_field: str | None = None,
    output_field: str | None = None,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    model: str | None = DEFAULT_MODEL,
    max_seq_len: int = 256,
    epochs: float | None = None,
    config: RunConfig | None = None,
    calibrate: bool = True,
    recalibrate: bool = False,
    price_per_hour: float = DEFAULT_PRICE_PER_HOUR,
) -> DataReport:
    """Validate a file of examples (and optionally a test file) without training anything.

    With a `model`, token statistics use its tokenizer and chat template, and the time estimate
    comes from a short measured training calibration of that model on this machine (cached; see
    `specialize.train.calibrate`), with the training settings of `config` (default settings
    otherwise). `calibrate=False` skips it: the report then has token counts but no time;
    `recalibrate=True` measures again instead of using the cached figure (after a hardware
    change, or when the first measurement ran beside other work).
    """
    epochs = epochs or (config or RunConfig()).train.epochs
    tokenizer = None
    if model is not None:
        from specialize.models.load import load_tokenizer

        tokenizer = load_tokenizer(model)
    spec = FormatSpec(
        input_field=input_field,
        output_field=output_field,
        system_prompt=system_prompt,
        prompt_template=prompt_template,
    )
    report = check_files(
        data,
        spec,
        test_path=test,
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
        epochs=epochs,
        tokens_per_second=None,
        price_per_hour=price_per_hour,
    )
    if model is not None and calibrate and report.ok and report.estimate is not None and report.rows:
        from specialize.train.calibrate import calibrate as measure
        from specialize.train.calibrate import estimate_seconds, training_plan

        run_config = (config or RunConfig()).model_copy(deep=True)
        run_config.model.base = model
        run_config.model.max_seq_len = max_seq_len
        run_config.train.epochs = epochs
        for key, value in (
            ("input_field", input_field),
            ("output_field", output_field),
            ("system_prompt", system_prompt),
            ("prompt_template", prompt_template),
        ):
            setattr(run_config.data, key, value)
        calibration = measure(run_config, data, use_cache=not recalibrate)
        estimate = report.estimate
        plan = training_plan(run_config, report.rows, has_test_file=test is not None)
        seconds, validation = estimate_seconds(
            plan, estimate.tokens_per_epoch / report.rows, epochs, calibration.tokens_per_second
        )
        estimate.tokens_per_second = calibration.tokens_per_second
        estimate.train_rows = plan.train_rows
        estimate.total_tokens = round(plan.train_rows * estimate.tokens_per_epoch / report.rows * epochs)
        estimate.seconds = seconds
        estimate.validation_seconds = validation
        estimate.cost_usd = seconds / 3600 * estimate.price_per_hour
        estimate.measured_on = calibration.machine
    return report


def resolve_run_config(
    config_path: str | Path | None, overrides: dict[str, Any], *, name: str | None = None
) -> RunConfig:
    """A config file (or the defaults) with command-line overrides applied; None means unset."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if config_path is not None:
        config = load_config(config_path, given)
    else:
        data: dict[str, Any] = {}
        for dotted, value in given.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        config = parse_config(data, source="command line")
    if config.name is None and name:
        config.name = name
    return config


def train(
    config: RunConfig | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Fine-tune into the run directory `out`, then write the run's drift reference profile.

    A failure of the profile does not lose the trained run: it is logged, and
    `specialize profile RUN` rebuilds it."""
    from specialize.monitor.profile import write_profile
    from specialize.train.sft import train as train_run

    run_config = config if isinstance(config, RunConfig) else load_config(config)
    result = train_run(run_config, out, resume=resume, progress=progress)
    if result.record is not None:
        from specialize.models.load import load_tokenizer

        try:
            # The run's saved config: a preference run takes its base from method.from_run.
            write_profile(result.run, load_tokenizer(result.run.config().model.base))
        except Exception as exc:  # noqa: BLE001 - reported, and recoverable with `specialize profile`
            log.warning(
                "could not write profile.json (%s); run `specialize profile %s`", exc, result.run.path
            )
    return result


def evaluate(
    run: str | Path, *, max_test_examples: int | None = None, progress: Callable | None = None
) -> EvalReport:
    """Every contender (zero-shot, few-shot, fine-tuned) on the run's held-out rows; writes eval/."""
    from specialize.evaluate.runner import evaluate as run_evaluation

    return run_evaluation(run, max_test_examples=max_test_examples, progress=progress)


def generate(
    run: str | Path,
    requests: Sequence[str],
    *,
    max_new_tokens: int = 64,
    free: bool = False,
) -> list[Any]:
    """Replies of the fine-tuned model to raw requests, prompted as it was trained, decoding under
    the run's default output contract unless `free` (see `specialize.data.contract`)."""
    from specialize.inference import generate as run_generate
    from specialize.inference import load_run

    trained = load_run(run)
    contract = None if free else trained.default_contract().contract
    return run_generate(
        trained.loaded,
        [trained.messages_for(text) for text in requests],
        max_new_tokens=max_new_tokens,
        constraint=contract,
    )


def serve(options: Any = None) -> None:
    """The OpenAI-compatible server over the adapter registry (blocks until stopped); the drift
    route is wired to the monitor."""
    from specialize.monitor.drift import drift_for_adapter
    from specialize.serve.app import serve as run_server

    run_server(options, drift=drift_for_adapter)


def drift(run: str | Path, request_log: str | Path, **options: Any) -> Any:
    """Compare recent traffic in a request log with the run's reference profile: a DriftReport
    (`over_time=True` adds the series over windows; see `specialize.monitor.drift.run_drift`)."""
    from specialize.monitor.drift import run_drift

    return run_drift(run, request_log, **options)


def export(run: str | Path, out: str | Path, *, format: str = "merged", **options: Any) -> Any:
    """Write the run's model for other runtimes: merged weights, GGUF, a PEFT directory, the base."""
    from specialize.export.run import export_run

    return export_run(run, format, out, **options)


def retrain(name: str, new: Sequence[str | Path] = (), **options: Any) -> Any:
    """A challenger version of registry adapter `name` trained on its parent's rows plus the rows
    in `new`, promoted only if it wins: a `loop.decisions.RetrainDecision`. `reviewed=[...]`,
    `request_log=` with `labels=`, and `registry=` select other sources and the registry; the
    other options are `loop.retrain.RetrainOptions` fields (margin, holdout_fraction, out, ...)."""
    from specialize.loop.retrain import NewRows, RetrainOptions
    from specialize.loop.retrain import retrain as run_retrain
    from specialize.registry import AdapterRegistry

    rows = NewRows(
        data=[Path(p) for p in new],
        reviewed=[Path(p) for p in options.pop("reviewed", ())],
        request_log=options.pop("request_log", None),
        labels=options.pop("labels", None),
    )
    registry = AdapterRegistry(options.pop("registry", None))
    return run_retrain(name, rows, RetrainOptions(**options), registry=registry)


def watch(name: str, request_log: str | Path, **options: Any) -> Any:
    """One `specialize watch --once` cycle for registry adapter `name`: a `loop.decisions.WatchCycle`
    (`loop.watch.EXIT_CODES[cycle.outcome]` is the command's exit code). Options are
    `loop.watch.WatchOptions` fields (data_dir, min_rows, webhook, ...) and `registry=`."""
    from specialize.loop.watch import WatchOptions, watch_once
    from specialize.registry import AdapterRegistry

    registry = AdapterRegistry(options.pop("registry", None))
    return watch_once(name, WatchOptions(request_log=Path(request_log), **options), registry=registry)
