"""The configuration of a run, as typed pydantic models, read from and written to YAML.

Every option group is its own class whose field descriptions double as documentation. Unknown
keys are rejected with a did-you-mean, because a misspelt `learning_rte` silently falling back to
the default is the most expensive kind of typo in fine-tuning.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from specialize.atomic import atomic_write_text
from specialize.errors import ConfigError
from specialize.models.bundled import DEFAULT_MODEL


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    train: str | None = Field(None, description="Training examples: .jsonl, .json, .csv or .parquet.")
    test: str | None = Field(
        None, description="Held-out test file; when absent a test split is cut from train."
    )
    input_field: str | None = Field(None, description="Column holding the request (for two-column data).")
    output_field: str | None = Field(None, description="Column holding the answer (for two-column data).")
    system_prompt: str | None = Field(None, description="System message added to every example.")
    prompt_template: str | None = Field(
        None, description="Python format string over a row's fields, e.g. 'Classify: {text}'."
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of train held out for validation loss.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share cut for the test split (no test file).")
    max_train_examples: int | None = Field(None, gt=0, description="Use at most this many training rows.")
    max_val_examples: int | None = Field(200, gt=0, description="Use at most this many validation rows.")
    max_test_examples: int | None = Field(None, gt=0, description="Use at most this many test rows.")
    output_schema: dict[str, Any] | str | None = Field(
        None,
        description="JSON schema every reply follows (inline, or a .json file). Default: inferred from the "
        "training replies: their label set, a schema of their JSON, or nothing for free text.",
    )


class ModelConfig(_Section):
    base: str = Field(DEFAULT_MODEL, description="Bundled alias, HF directory, .gguf file or cached hub id.")
    max_seq_len: int = Field(256, ge=8, le=131072, description="Longer examples are truncated.")
    dtype: Literal["auto", "f32", "f16", "bf16"] = Field(
        "auto",
        description=(
            "auto: for serving, evaluation and generate, bf16 where bf16 matmuls are native (CUDA, "
            "CPUs with AVX512-BF16 or AMX) and fp32 elsewhere; training picks its own (train.precision)."
        ),
    )


# TRL's loss variants (DPOConfig.loss_type, KTOConfig.loss_type), checked here so a typo fails
# before a model is loaded.
DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
KTO_LOSSES = ("kto", "apo_zero_unpaired")


class MethodConfig(_Section):
    kind: Literal["lora", "qlora", "full", "dpo", "kto"] = Field(
        "lora",
        description="LoRA adapter (default); qlora: LoRA over the base frozen in 4-bit NF4 (bitsandbytes, "
        "the `qlora` extra), for bases too big to train in their own precision; full fine-tuning; or "
        "preference tuning of a LoRA adapter with TRL: dpo (pairs chosen/rejected) or kto (replies "
        "rated good or bad).",
    )
    from_run: str | None = Field(
        None,
        description="An earlier LoRA run directory whose adapter this run starts from, on its base. "
        "lora/qlora: training continues that adapter on this run's rows (its rank and targets are kept); "
        "dpo/kto: it is both the starting point and the reference model (default: a new adapter on the "
        "base, the base as reference).",
    )
    beta: float = Field(
        0.1, gt=0, description="dpo/kto: how far the tuned model may move from the reference (higher: less)."
    )
    loss_type: str | None = Field(
        None,
        description="dpo/kto: TRL's loss variant (dpo: sigmoid, ipo, hinge, ...; kto: kto, apo_zero_unpaired).",
    )
    variant: Literal["lora", "dora", "rslora"] = Field(
        "lora",
        description="Adapter flavour (PEFT's LoraConfig): lora = plain; dora = weight-decomposed LoRA "
        "(a trained magnitude per output, closer to full fine-tuning at low rank, slower steps); "
        "rslora = rank-stabilised scaling alpha/sqrt(r), so higher ranks keep learning.",
    )
    lora_r: int = Field(
        32,
        ge=1,
        le=1024,
        description="LoRA rank (default measured by benchmarks/defaults_sweep.py on three kinds of task).",
    )
    lora_alpha: float = Field(
        64, gt=0, description="LoRA scaling numerator (scale = alpha / r; alpha / sqrt(r) for rslora)."
    )
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, description="0 skips the dropout copy of every input: faster, less memory."
    )
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt; 'all-linear' = every linear layer but the LM head."
    )

    @model_validator(mode="after")
    def _variant_needs_an_adapter(self) -> MethodConfig:
        # Checked here rather than ignored: a DoRA run that silently trains every weight instead
        # would cost the user a full fine-tune they did not ask for.
        if self.kind == "full" and self.variant != "lora":
            raise ValueError(
                f"variant '{self.variant}' is a kind of LoRA adapter; kind 'full' trains no adapter "
                "(use kind: lora or qlora, or drop the variant)"
            )
        if self.kind == "full" and self.from_run is not None:
            raise ValueError(
                "from_run continues an earlier LoRA adapter; kind 'full' trains the whole model "
                "(use kind: lora, or drop from_run)"
            )
        if not self.preference:
            if self.loss_type is not None:
                raise ValueError(
                    f"loss_type is for preference tuning (kind: dpo or kto), not kind '{self.kind}'"
                )
        elif self.loss_type is not None:
            known = DPO_LOSSES if self.kind == "dpo" else KTO_LOSSES
            if self.loss_type not in known:
                close = difflib.get_close_matches(self.loss_type, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(
                    f"loss_type '{self.loss_type}' is not a {self.kind} loss{hint} (known: {', '.join(known)})"
                )
        return self

    @property
    def preference(self) -> bool:
        """Whether the run learns from preferences (dpo, kto) rather than from examples."""
        return self.kind in ("dpo", "kto")

    @property
    def resolved_loss_type(self) -> str:
        """The TRL loss variant: the configured one, else the kind's standard loss."""
        return self.loss_type or ("sigmoid" if self.kind == "dpo" else "kto")

    @property
    def adapter(self) -> bool:
        """Whether the run trains a PEFT adapter (lora, qlora) rather than the whole model."""
        return self.kind != "full"


class TrainConfig(_Section):
    # Defaults (epochs, the adapter learning rate, LoRA rank) from benchmarks/defaults_sweep.py: on a
    # large label set, a JSON extraction and a free-text rewrite, 2e-4 for one epoch at rank 16 left
    # the small model near its zero-shot output; 1e-3, two epochs, rank 32 was best on all three.
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float | None = Field(
        None, gt=0, description="Default: 1e-3 for adapters, 2e-5 for full, 5e-5 for dpo/kto."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: str = Field("cosine")
    eval_every: int = Field(50, ge=1, description="Validation loss and checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept for --resume.")
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Stop after N evaluations without a better val loss; null disables."
    )
    packing: bool = Field(
        True, description="Lay a batch's examples end to end (no padding, no cross-attention); else left-pad."
    )
    pack_tokens: int | None = Field(
        None,
        ge=16,
        description="Longest packed row; default: the batch's longest example. Short rows keep the "
        "attention matrix (computed and kept for backward) small.",
    )
    log_every: int = Field(5, ge=1)
    seed: int = 42
    threads: int | None = Field(None, ge=1, description="torch threads; default: all cores.")
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto",
        description="Attention kernel for training. auto: eager on CPU when rows are at most "
        "512 tokens (faster than torch's CPU flash kernel there), else the model's default (sdpa).",
    )
    report_to: (
        Literal["none", "tensorboard", "mlflow", "wandb"] | list[Literal["tensorboard", "mlflow", "wandb"]]
    ) = Field(
        "none",
        description="Experiment trackers that get the training logs (the Trainer's report_to); each must "
        "be installed. TensorBoard event files go to the run's logs/tensorboard/.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Matmul precision of training. auto: bf16 mixed precision where the hardware has "
        "native bf16 (CUDA, or CPUs with AVX512-BF16/AMX), else fp32. Trainable weights stay fp32.",
    )


class PriceConfig(_Section):
    """How requests are priced: per million tokens like an API, or per hour of a machine."""

    mode: Literal["tokens", "machine"] = "machine"
    input_per_million: float = Field(0.15, ge=0, description="USD per 1M input tokens (mode=tokens).")
    output_per_million: float = Field(0.60, ge=0, description="USD per 1M output tokens (mode=tokens).")
    machine_per_hour: float = Field(0.10, ge=0, description="USD per hour of this machine (mode=machine).")


class EvalConfig(_Section):
    task: Literal["auto", "classification", "json", "text"] = "auto"
    few_shot_k: int = Field(5, ge=0, description="Examples in the few-shot prompt (0 disables).")
    few_shot_selection: Literal["random", "similar"] = "similar"
    zero_shot_prompt: str | None = Field(None, description="File with your own zero-shot instruction.")
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int | None = Field(
        None, ge=1, description="Default: p99 of training completions + margin."
    )
    latency_samples: int = Field(
        8,
        ge=0,
        description="Requests timed one by one at batch size 1 (the prefix all prompts share cached, as a server with prefix caching has it).",
    )
    measure_merged: bool = Field(
        True,
        description="Also time the adapter merged into a copy of the base, as a single-adapter "
        "deployment runs it (LoRA runs).",
    )
    measure_served: bool = Field(
        True,
        description="Also time the adapter as `specialize serve` runs it: unmerged, in the "
        "batching engine (LoRA runs).",
    )
    constrained: bool = Field(
        True, description="Also measure every contender decoding under the run's output contract."
    )
    bootstrap_resamples: int = Field(1000, ge=100)
    classic_baseline: bool = Field(
        True, description="Also measure TF-IDF + logistic regression (classification tasks)."
    )
    target_precision: float = Field(
        0.9, gt=0, le=1, description="Precision the recommended confidence threshold must reach."
    )
    catch_all_label: str | None = Field(
        None,
        description="The label set's catch-all class (out of scope, other); default: detected by name.",
    )
    learning_curve: list[float] | None = Field(
        None,
        description="Train again on these nested fractions of the training rows (e.g. [0.25, 0.5, 1.0]) "
        "and fit how the metric grows with data; off by default (each fraction is a training run).",
    )
    target_metric: float | None = Field(
        None, description="The task metric you need: the learning curve says how many rows reach it."
    )

    @field_validator("learning_curve")
    @classmethod
    def _fractions(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not value or any(not 0 < f <= 1 for f in value):
            raise ValueError("learning_curve: fractions must lie in (0, 1], e.g. [0.25, 0.5, 1.0]")
        return sorted(set(value) | {1.0})

    extra_contenders: list[dict[str, Any]] = Field(default_factory=list)
    price: PriceConfig = Field(default_factory=PriceConfig)


class DriftConfig(_Section):
    """Thresholds of the drift monitor (the `monitor:` section of a run config)."""

    warn_alpha: float = Field(
        0.05, gt=0, lt=1, description="Chance that unshifted traffic warns (all checks together)."
    )
    alert_alpha: float = Field(
        0.01, gt=0, lt=1, description="Chance that unshifted traffic alerts (all checks together)."
    )
    min_window: int = Field(
        30, ge=5, description="Fewer usable requests than this: 'not enough data', no verdict."
    )
    max_window: int = Field(500, ge=10, description="The most recent N requests are tested.")
    permutations: int = Field(
        1000, ge=99, description="Permutations per test (raised so that an alert is reachable)."
    )
    min_ks: float = Field(
        0.1, ge=0, le=1, description="Smallest KS distance that may fire (lengths, descriptors)."
    )
    min_domain_auc: float = Field(
        0.55, ge=0.5, le=1, description="Smallest domain-classifier AUC that may fire."
    )
    min_invalid_excess: float = Field(
        0.05, ge=0, le=1, description="Invalid share must exceed the baseline by this."
    )
    invalid_baseline: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Expected invalid share; default: compare with the evaluated model's "
        "outputs on the test split, or 0.02 when the run has not been evaluated.",
    )
    time_windows: int = Field(8, ge=1, description="Windows in the drift-over-time plot.")
    seed: int = 0

    @model_validator(mode="after")
    def _alert_stricter(self) -> DriftConfig:
        if self.alert_alpha > self.warn_alpha:
            raise ValueError("alert_alpha must not exceed warn_alpha (an alert is the stricter level)")
        return self


class RunConfig(_Section):
    """Everything that defines a run; `config.yaml` in a run directory is this, resolved."""

    name: str | None = None
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    monitor: DriftConfig = Field(default_factory=DriftConfig)

    @model_validator(mode="after")
    def _fractions_leave_room(self) -> RunConfig:
        if self.data.val_fraction + self.data.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must leave most rows for training")
        return self

    @property
    def learning_rate(self) -> float:
        if self.train.learning_rate is not None:
            return self.train.learning_rate
        if self.method.preference:
            # Preference losses move a model further per step than next-token loss: TRL's LoRA recipes
            # use rates an order below supervised LoRA's.
            return 5e-5
        return 1e-3 if self.method.adapter else 2e-5


def parse_config(data: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Validate a config mapping, turning pydantic's errors into one readable ConfigError."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections (data, model, method, train, eval)")
    _resolve_relative_paths(data, path.parent)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return parse_config(data, source=str(path))


def save_config(config: RunConfig, path: str | Path) -> None:
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    atomic_write_text(Path(path), text)


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Data paths in a config file are relative to the file, so configs work from any cwd."""
    section = data.get("data")
    if not isinstance(section, dict):
        return
    for key in ("train", "test", "output_schema"):
        value = section.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            candidate = base / value
            if candidate.exists() or not Path(value).exists():
                section[key] = str(candidate)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key{_did_you_mean(error['loc'])}")
        else:
            lines.append(f"  {loc or '(top level)'}: {error['msg']}")
    return "\n".join(lines)


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; known keys: {', '.join(model.model_fields)}"
