"""Preference tuning (`method.kind: dpo | kto`) with TRL's DPOTrainer and KTOTrainer.

The run directory is the one supervised runs write (config.yaml, splits/, adapter/, checkpoints/,
metrics.jsonl, run.json), so evaluation, serving, the registry and export treat a preference run
like any LoRA run. What differs is only the loss, and that comes from TRL rather than from us.

The trained thing is always a LoRA adapter, of the configured variant:

- on the base (no `method.from_run`): a new adapter; the reference model is the base itself, which
  TRL gets by disabling the adapter (no second copy of the model in memory);
- on an earlier run (`method.from_run: runs/x`): that run's adapter, loaded trainable. TRL then
  copies it into a frozen "ref" adapter and computes the reference log-probabilities through it, so
  the reference is exactly the parent run. Only the trained adapter is saved.

Why TRL's tokenization and not ours (`data.tokenize.encode`): both render through the tokenizer's
chat template (rows are handed over in TRL's conversational shape), and TRL's collator lays
chosen and rejected out as one batch of twice the size, which its loss expects. Our packing
does not apply: DPO compares the two sides row by row, and packed rows would need TRL's
padding-free path, which it supports only with FlashAttention (not on CPU). Rows longer than
`model.max_seq_len` keep their start (TRL's `keep_start`), so the end of a long reply is cut;
`specialize check` lists them.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from specialize.atomic import make_temp_dir, replace_dir
from specialize.config import RunConfig, save_config
from specialize.data.contract import run_contract, training_contract
from specialize.data.preference import (
    PreferencePair,
    PreferenceRow,
    RatedReply,
    preference_row,
    reference_rows,
    unpair,
)
from specialize.data.prepare import prepare_splits, read_splits, write_splits
from specialize.errors import ConfigError, RunError
from specialize.models.load import load_model
from specialize.models.registry import weights_fingerprint
from specialize.outputs import detect_task
from specialize.records.run import BaseModelRecord, ExampleCounts, RunRecord
from specialize.run_dir import RunDir
from specialize.train.callbacks import MetricsLogCallback, ProgressCallback, TrainProgress
from specialize.train.parent import ParentRun, inherit_parent, parent_run
from specialize.train.sft import (
    EAGER_MAX_ROW_TOKENS,
    TrainResult,
    _checkpoint_step,
    _use_bf16,
    check_run_dir,
    is_main_process,
    lora_config,
    schedule_arguments,
)
from specialize.train.trackers import requested_trackers, tracker_callbacks

log = logging.getLogger(__name__)

# metrics.jsonl keys TRL logs for a preference step, kept in run.json from the last log line.
REWARD_ACCURACY = "rewards/accuracies"
REWARD_MARGIN = "rewards/margins"


def train_preference(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """DPO or KTO into the run directory `out` (see the module docstring); `resume` continues it."""
    import torch
    from peft import PeftModel
    from transformers import PrinterCallback, set_seed

    run = RunDir(Path(out))
    main = is_main_process()
    checkpoint = check_run_dir(run, resume, main)
    if resume:
        config = run.config()
    method = config.method
    parent = parent_run(method.from_run) if method.from_run else None
    if parent is not None and not resume:
        config = inherit_parent(config, parent)
    torch.set_num_threads(config.train.threads or os.cpu_count() or 1)
    set_seed(config.seed)

    bf16 = _use_bf16(config)
    dtype = "bf16" if bf16 and config.model.dtype == "auto" else config.model.dtype
    loaded = load_model(config.model.base, dtype=dtype)
    tokenizer = loaded.tokenizer
    splits, report = (read_splits(run), None) if resume else prepare_splits(config, tokenizer)
    train_rows = _rows(splits.train)
    val_rows = _rows(splits.val)
    if method.kind == "dpo" and any(isinstance(r, RatedReply) for r in train_rows):
        raise ConfigError(
            f"{config.data.train}: method.kind dpo needs pairs {{prompt, chosen, rejected}}; these are replies "
            "rated true/false, which method.kind: kto trains on"
        )
    references = [e.completion or "" for e in reference_rows(splits.train)]
    task = detect_task(references) if references else "text"
    labels = sorted(set(references)) if task == "classification" else None
    if parent is not None and config.data.output_schema is None:
        # The parent's contract, task and labels: the chosen replies of a few corrections name only
        # the labels that were mistaken, and the tuned model must still answer every label.
        contract = run_contract(parent.run)
        inherited = parent.run.record()
        task, labels = inherited.task or task, inherited.labels or labels
    else:
        contract = training_contract(config.data.output_schema, references)
    trackers = requested_trackers(config.train)
    if not resume and main:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(config, run.config_file)
        write_splits(run, splits, report)

    train_set = to_dataset(train_rows, method.kind, config.seed)
    val_set = to_dataset(val_rows, method.kind, config.seed) if val_rows else None
    attention = _attention(config, loaded.model.device.type)
    if attention is not None:
        loaded.model.set_attn_implementation(attention)
    model: Any = loaded.model
    peft_config = None
    if parent is not None:
        model = PeftModel.from_pretrained(model, str(parent.adapter), is_trainable=True)
    else:
        peft_config = lora_config(method)

    report_to, tracker_cbs = tracker_callbacks(trackers, run.tensorboard, main)
    has_val = val_set is not None and len(val_set) > 0
    args = _trainer_args(
        config,
        run,
        has_val=has_val,
        bf16=bf16,
        report_to=report_to,
        on_cuda=loaded.model.device.type == "cuda",
    )
    metrics_cb = MetricsLogCallback(run.metrics, resume_step=_checkpoint_step(checkpoint), is_main=main)
    callbacks: list[Any] = [metrics_cb, *tracker_cbs]
    if progress is not None:
        callbacks.append(ProgressCallback(progress, metrics_cb))
    trainer_class = _trainer_class(method.kind)
    trainer = trainer_class(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set if has_val else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config,
    )
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.perf_counter() - started
    val_loss = trainer.evaluate()["eval_loss"] if has_val else None

    record = None
    if trainer.is_world_process_zero():
        _save_adapter(trainer.model, tokenizer, run)
        last = _last_logged(trainer.state.log_history)
        record = RunRecord(
            base_model=BaseModelRecord(**loaded.ref.to_dict()),
            base_fingerprint=weights_fingerprint(loaded.ref),
            method=method.kind,
            variant=method.variant if parent is None else _parent_variant(parent),
            task=task,
            labels=labels,
            output_contract=contract.to_dict(),
            examples=ExampleCounts(train=len(splits.train), val=len(splits.val), test=len(splits.test)),
            steps=output.global_step,
            train_loss=output.training_loss,
            val_loss=val_loss,
            train_seconds=round(train_seconds, 2),
            resumed=resume,
            tokens_per_second=metrics_cb.last_tokens_per_second,
            precision="bf16" if bf16 else "fp32",
            attention=attention or "default",
            trainable_parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            report_to=trackers,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            from_run=str(parent.run.path) if parent is not None else None,
            beta=method.beta,
            loss_type=method.resolved_loss_type,
            reward_accuracy=last.get(REWARD_ACCURACY),
            reward_margin=last.get(REWARD_MARGIN),
            examples_per_second=_examples_per_second(
                output.global_step - _checkpoint_step(checkpoint), args, train_seconds
            ),
        )
        run.write_record(record)
    return TrainResult(run=run, record=record)


def _rows(examples: list[Any]) -> list[PreferenceRow]:
    rows = [preference_row(e) for e in examples]
    missing = [str(e.source) for e, r in zip(examples, rows, strict=True) if r is None]
    if missing:
        raise RunError(
            f"split rows without a preference (chosen/rejected or label): {', '.join(missing[:5])}"
        )
    return [r for r in rows if r is not None]


def to_dataset(rows: list[PreferenceRow], kind: str, seed: int) -> Any:
    """The rows in TRL's conversational shape (`datasets.Dataset`).

    KTO reads pairs as two rated replies. Its trainer walks the rows in order (its KL estimate
    pairs each prompt with a neighbour's reply within a batch), so they are shuffled here, seeded.
    """
    from datasets import Dataset

    def reply(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    if kind == "dpo":
        pairs = [r for r in rows if isinstance(r, PreferencePair)]
        return Dataset.from_list(
            [{"prompt": r.prompt, "chosen": reply(r.chosen), "rejected": reply(r.rejected)} for r in pairs]
        )
    rated = unpair(rows)
    random.Random(seed).shuffle(rated)
    return Dataset.from_list(
        [{"prompt": r.prompt, "completion": reply(r.completion), "label": r.desirable} for r in rated]
    )


def _trainer_class(kind: str) -> Any:
    from trl import DPOTrainer, KTOTrainer

    return DPOTrainer if kind == "dpo" else KTOTrainer


def _trainer_args(
    config: RunConfig, run: RunDir, *, has_val: bool, bf16: bool, report_to: Any, on_cuda: bool
) -> Any:
    """DPOConfig / KTOConfig from the run config, with the settings SFT runs use (TRL's own
    defaults differ: gradient checkpointing and bf16 on, which slow a CPU run or fail on one)."""
    from trl import DPOConfig, KTOConfig

    method = config.method
    common: dict[str, Any] = dict(
        **schedule_arguments(config, run, has_val=has_val),
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        use_cpu=not on_cuda,
        gradient_checkpointing=False,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        disable_tqdm=True,
        report_to=report_to,
        dataloader_num_workers=0,
        max_length=config.model.max_seq_len,
        beta=method.beta,
        loss_type=method.resolved_loss_type,
    )
    if method.kind == "dpo":
        return DPOConfig(**common)
    return KTOConfig(**common)


def _attention(config: RunConfig, device: str) -> str | None:
    """As for SFT (`sft.attention_kernel`): eager on CPU while rows are short, which they are when
    `max_seq_len` bounds them below the limit."""
    if config.train.attention != "auto":
        return config.train.attention
    if device != "cpu":
        return None
    return "eager" if config.model.max_seq_len <= EAGER_MAX_ROW_TOKENS else None


def _parent_variant(parent: ParentRun) -> str:
    record = parent.run.record()
    return record.variant


def _last_logged(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last training log line holding the preference metrics (not an eval line)."""
    for entry in reversed(history):
        if REWARD_MARGIN in entry:
            return {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
    return {}


def _examples_per_second(steps: int, args: Any, seconds: float) -> float | None:
    """Training rows (pairs for DPO, rated replies for KTO) per second in this session."""
    if seconds <= 0 or steps <= 0:
        return None
    return round(steps * args.per_device_train_batch_size * args.gradient_accumulation_steps / seconds, 3)


def _save_adapter(model: Any, tokenizer: Any, run: RunDir) -> None:
    """Only the trained adapter ("default"): TRL's frozen "ref" copy of a parent is not the result."""
    target = run.adapter
    tmp = make_temp_dir(target)
    try:
        model.save_pretrained(tmp, selected_adapters=["default"])
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
