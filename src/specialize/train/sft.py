"""Supervised fine-tuning: the whole setup -> train -> save flow, readable top to bottom.

Built on `transformers.Trainer` with PEFT adapters. We pass the Trainer pre-tokenized examples
and our own padding collator instead of using TRL's `SFTTrainer` because the completion-only
labels come from `data.tokenize.encode` (shared with evaluation and the data checks), so the
rows scored in `specialize check` are exactly the rows trained on.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.atomic import make_temp_dir, replace_dir
from specialize.config import RunConfig, save_config
from specialize.data.contract import training_contract
from specialize.data.prepare import prepare_splits, read_splits, write_splits
from specialize.data.tokenize import encode
from specialize.errors import RunError
from specialize.models.load import default_device, load_model, native_bf16
from specialize.models.registry import weights_fingerprint
from specialize.outputs import detect_task
from specialize.records.run import BaseModelRecord, ExampleCounts, RunRecord
from specialize.run_dir import RunDir
from specialize.train.callbacks import MetricsLogCallback, ProgressCallback, TrainProgress
from specialize.train.collator import CompletionCollator, EncodedDataset, PackedCollator, supervised_loss
from specialize.train.parent import inherit_parent, parent_run
from specialize.train.trackers import requested_trackers, tracker_callbacks

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run: RunDir
    # None on ranks other than 0 of a distributed run: only rank 0 writes run.json.
    record: RunRecord | None


def schedule_arguments(config: RunConfig, run: RunDir, *, has_val: bool) -> dict[str, Any]:
    """The Trainer arguments every run takes from its config (epochs, batch, learning-rate schedule,
    logging, evaluation and checkpoint cadence), shared by SFT and the preference trainers (TRL's
    configs are TrainingArguments subclasses), so one config means the same schedule for both."""
    return dict(
        output_dir=str(run.checkpoints),
        num_train_epochs=config.train.epochs,
        max_steps=config.train.max_steps or -1,
        per_device_train_batch_size=config.train.batch_size,
        per_device_eval_batch_size=config.train.batch_size,
        gradient_accumulation_steps=config.train.grad_accum,
        learning_rate=config.learning_rate,
        warmup_steps=config.train.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=config.train.weight_decay,
        lr_scheduler_type=config.train.lr_scheduler,
        logging_steps=config.train.log_every,
        eval_strategy="steps" if has_val else "no",
        eval_steps=config.train.eval_every,
        save_strategy="steps",
        save_steps=config.train.eval_every,
        save_total_limit=config.train.keep_checkpoints,
    )


def train(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: Callable[[TrainProgress], None] | None = None,
    prepared: tuple[Any, Any] | None = None,
) -> TrainResult:
    """Fine-tune `config.model.base` on `config.data` into the run directory `out`.

    `prepared` (Splits, DataReport) trains on those rows instead of reading config.data: the
    learning curve (`evaluate.subsets`) trains nested subsets of a run's own split this way.

    With `resume=True` the run's own saved config and splits are used and training continues
    from its last checkpoint; otherwise `out` must not exist yet (or be empty).
    """
    if _is_preference(config, Path(out), resume):
        from specialize.train.preference import train_preference

        return train_preference(config, out, resume=resume, progress=progress)
    import torch
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments, set_seed

    run = RunDir(Path(out))
    main = is_main_process()
    checkpoint = check_run_dir(run, resume, main)
    if resume:
        config = run.config()
    # Continuing an earlier adapter (method.from_run): checked, and its base and prompt inherited,
    # before anything is loaded or written.
    parent = parent_run(config.method.from_run) if config.method.from_run else None
    if parent is not None and not resume:
        config = inherit_parent(config, parent)
    torch.set_num_threads(config.train.threads or os.cpu_count() or 1)
    set_seed(config.seed)

    bf16 = _use_bf16(config)
    dtype = config.model.dtype
    if bf16 and config.method.adapter and dtype == "auto":
        # The frozen base is only read: bf16 weights halve its memory and spare autocast a cast of
        # every weight at every step. PEFT keeps the LoRA weights (the trained ones) in fp32.
        dtype = "bf16"
    if config.method.kind == "qlora":
        from specialize.train.quantize import load_quantized

        loaded = load_quantized(config.model.base, dtype=dtype, bf16=bf16)
    else:
        loaded = load_model(config.model.base, dtype=dtype)
    tokenizer = loaded.tokenizer
    if resume:
        splits, report = read_splits(run), None
    elif prepared is not None:  # a learning-curve subset: the parent run's rows, not config.data's
        splits, report = prepared
    else:
        splits, report = prepare_splits(config, tokenizer)
    completions = [e.completion or "" for e in splits.train]
    # Resolved before anything is written: a bad output schema must not cost a training run.
    contract = training_contract(config.data.output_schema, completions)
    trackers = requested_trackers(config.train)
    if not resume and main:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(config, run.config_file)
        write_splits(run, splits, report)

    max_len = config.model.max_seq_len
    train_set = EncodedDataset([encode(tokenizer, e, max_len) for e in splits.train])
    val_set = EncodedDataset([encode(tokenizer, e, max_len) for e in splits.val]) if splits.val else None
    attention = attention_kernel(config, loaded.model.device.type, train_set, val_set)
    if attention is not None:
        loaded.model.set_attn_implementation(attention)
    model = _prepare_model(loaded.model, config, parent.adapter if parent is not None else None)

    report_to, tracker_cbs = tracker_callbacks(trackers, run.tensorboard, main)
    has_val = val_set is not None and len(val_set) > 0
    early_stop = has_val and config.train.early_stopping_patience is not None
    on_cuda = loaded.model.device.type == "cuda"
    args = TrainingArguments(
        **schedule_arguments(config, run, has_val=has_val),
        load_best_model_at_end=early_stop,
        metric_for_best_model="eval_loss" if early_stop else None,
        greater_is_better=False if early_stop else None,
        seed=config.seed,
        data_seed=config.seed,
        # Mixed precision: matmuls under bf16 autocast, fp32 master weights and optimizer state.
        bf16=bf16,
        use_cpu=not on_cuda,
        # Packed batches have no padding to save; padded ones are grouped by length to cut it.
        train_sampling_strategy="random" if config.train.packing else "group_by_length",
        # Packed rows carry no attention mask to count padding by; their few row-end pad tokens
        # are computed like the others, so tokens/s there is the rate of computed tokens.
        include_num_input_tokens_seen="all" if config.train.packing else "non_padding",
        # Every LoRA weight takes part in every forward pass: skip DDP's search for unused ones.
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        prediction_loss_only=True,
        disable_tqdm=True,
        report_to=report_to,
        dataloader_num_workers=0,
    )
    metrics_cb = MetricsLogCallback(run.metrics, resume_step=_checkpoint_step(checkpoint), is_main=main)
    callbacks: list[Any] = [metrics_cb, *tracker_cbs]
    if progress is not None:
        callbacks.append(ProgressCallback(progress, metrics_cb))
    if early_stop:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.train.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set if has_val else None,
        data_collator=(
            PackedCollator(tokenizer.pad_token_id, config.train.pack_tokens)
            if config.train.packing
            else CompletionCollator(tokenizer.pad_token_id)
        ),
        compute_loss_func=supervised_loss,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; progress goes to `progress`
    started = time.perf_counter()
    with _autocast_lora_inputs(model, bf16):
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.perf_counter() - started
        val_loss = trainer.evaluate()["eval_loss"] if has_val else None

    record = None
    if trainer.is_world_process_zero():
        _save_weights(model, tokenizer, run, config)
        task = detect_task(completions)
        record = RunRecord(
            base_model=BaseModelRecord(**loaded.ref.to_dict()),
            base_fingerprint=weights_fingerprint(loaded.ref),
            method=config.method.kind,
            variant=config.method.variant,
            task=task,
            labels=sorted(set(completions)) if task == "classification" else None,
            output_contract=contract.to_dict(),
            examples=ExampleCounts(train=len(splits.train), val=len(splits.val), test=len(splits.test)),
            steps=output.global_step,
            train_loss=output.training_loss,
            val_loss=val_loss,
            train_seconds=round(train_seconds, 2),
            resumed=resume,
            supervised_tokens=sum(len(i["labels"]) - i["labels"].count(-100) for i in train_set.items),
            tokens_per_second=metrics_cb.last_tokens_per_second,
            precision="bf16" if bf16 else "fp32",
            attention=attention or "default",
            trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
            report_to=trackers,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            from_run=config.method.from_run,
        )
        run.write_record(record)
    return TrainResult(run=run, record=record)


def _is_preference(config: RunConfig, out: Path, resume: bool) -> bool:
    """dpo and kto runs train in `train.preference`; on --resume the run's saved config decides."""
    run = RunDir(out)
    if resume and run.config_file.is_file():
        return run.config().method.preference
    return config.method.preference


def _autocast_lora_inputs(model: Any, bf16: bool) -> Any:
    """Under bf16 autocast, PEFT's cast of every LoRA layer's input to the fp32 adapter dtype is
    wasted: autocast casts it back to bf16 for the matmul, and the fp32 copy of every input costs
    memory until backward (benchmarks/train_throughput.py measures the peak RSS)."""
    import contextlib

    if not bf16 or not hasattr(model, "peft_config"):
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)


EAGER_MAX_ROW_TOKENS = 512


def attention_kernel(config: RunConfig, device: str, *datasets: EncodedDataset | None) -> str | None:
    """The attention implementation to train with, or None for the model's default.

    On CPU, torch's flash-attention kernel (what sdpa picks) is slower per training step than
    eager attention's plain matmuls while rows are short (benchmarks/train_throughput.py --ablation
    measures it). Eager keeps a (row x row) matrix per head and layer for the backward pass, so it
    is only chosen while rows stay short: packed rows are at most `pack_tokens` or the longest example.
    """
    if config.train.attention != "auto":
        return config.train.attention
    if device != "cpu":
        return None
    longest = max((len(item["input_ids"]) for data in datasets if data for item in data.items), default=0)
    row = max(longest, config.train.pack_tokens or 0) if config.train.packing else longest
    return "eager" if row <= EAGER_MAX_ROW_TOKENS else None


def _use_bf16(config: RunConfig) -> bool:
    """bf16 mixed precision when asked, or under `auto` where bf16 matmuls are native (CUDA, and
    CPUs with AVX512-BF16/AMX, where they run several times faster than fp32 ones)."""

    if config.train.precision != "auto":
        return config.train.precision == "bf16"
    return native_bf16(default_device())


def check_run_dir(run: RunDir, resume: bool, main: bool = True) -> Path | None:
    if resume:
        if not run.config_file.is_file():
            raise RunError(f"{run.path}: nothing to resume (no config.yaml); start it without --resume")
        checkpoint = last_checkpoint(run.checkpoints)
        if checkpoint is None:
            raise RunError(f"{run.path}: no checkpoint to resume from in {run.checkpoints}")
        return checkpoint
    # Only rank 0 writes the run directory, so only it may find the directory taken: another rank
    # checking after rank 0 began writing would see rank 0's own files.
    if main and run.path.exists() and any(run.path.iterdir()):
        raise RunError(
            f"{run.path} already exists; pass --resume to continue that run, or choose another --out"
        )
    return None


def last_checkpoint(directory: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not directory.is_dir():
        return None
    found = get_last_checkpoint(str(directory))
    return Path(found) if found else None


def _checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else 0


def _prepare_model(model: Any, config: RunConfig, start_adapter: Path | None = None) -> Any:
    """The model the Trainer trains: the base itself (full), or the base wrapped in PEFT's LoRA
    layers of the configured variant (DoRA's magnitude vectors, rsLoRA's alpha/sqrt(r) scaling);
    with `start_adapter` (method.from_run), that adapter loaded trainable instead, its own rank
    and targets kept, so training continues where the parent run stopped."""
    method = config.method
    if not method.adapter:
        return model
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if method.kind == "qlora":
        # PEFT's recipe for a k-bit base: the remaining non-quantised weights (norms, embeddings)
        # in fp32 for stable training. That costs memory where the vocabulary is large next to the
        # model (SmolLM2-135M: the fp32 embedding is 108 of its 159 MiB of frozen weights). No gradient
        # checkpointing: no other method uses it here.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if start_adapter is not None:
        return PeftModel.from_pretrained(model, str(start_adapter), is_trainable=True)
    return get_peft_model(model, lora_config(method))


def lora_config(method: Any) -> Any:
    """PEFT's LoraConfig for a `config.MethodConfig`: rank, scaling, targets and variant (shared
    with preference tuning, whose new adapters are the same kind of LoRA)."""
    from peft import LoraConfig

    return LoraConfig(
        r=method.lora_r,
        lora_alpha=method.lora_alpha,
        lora_dropout=method.lora_dropout,
        target_modules=method.target_modules,
        use_dora=method.variant == "dora",
        use_rslora=method.variant == "rslora",
        task_type="CAUSAL_LM",
    )


def _save_weights(model: Any, tokenizer: Any, run: RunDir, config: RunConfig) -> None:
    """Write the adapter (or full model) to a temp dir and rename it into place: a run killed
    while saving never leaves a half-written adapter behind."""
    target = run.adapter if config.method.adapter else run.full_model
    tmp = make_temp_dir(target)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): only it writes the run directory."""
    return int(os.environ.get("RANK", "0")) == 0
