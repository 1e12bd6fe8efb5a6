"""`export_run`: write a trained run in a format a deployment target reads, checked and atomic.

merged  plain transformers weights (adapter folded in), checked by greedy agreement on test prompts
gguf    one llama.cpp file, checked by reading every tensor back
peft    a clean adapter directory for vLLM / LoRAX, checked by parsing it as peft does
base    the run's base model as a plain HF directory (what `vllm serve BASE --enable-lora` needs
        when the base is a bundled GGUF or the machine is offline), checked like merged

Everything is written into a temp directory next to `out` and renamed into place at the end, so a
failure at any step (a bad run, an unsupported model, a failed check) leaves no partial output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.errors import ConfigError
from specialize.export.card import base_card, base_of, model_card
from specialize.export.gguf import (
    QUANTS,
    GGUFSource,
    check_supported,
    source_tokenizer_pre,
    verify_gguf,
    write_gguf,
)
from specialize.export.merge import (
    DTYPES,
    Reference,
    check_agreement,
    load_base,
    load_trained,
    merge,
    sample_prompts,
    save_merged,
)
from specialize.export.peft_dir import base_model_name, write_peft_dir
from specialize.records.run import RunRecord
from specialize.run_dir import RunDir, open_run

log = logging.getLogger(__name__)

FORMATS = ("merged", "gguf", "peft", "base")
CHECK_TOKENS = 32  # greedy tokens compared per test prompt in the merged check


@dataclass
class ExportResult:
    out: Path
    format: str
    size_bytes: int
    files: list[str]
    checks: dict[str, Any] = field(default_factory=dict)
    usage: str = ""  # the "How to run" snippet also written to the model card


def export_run(
    run: str | Path,
    fmt: str,
    out: str | Path,
    *,
    dtype: str | None = None,
    quant: str | None = None,
    check_samples: int = 8,
) -> ExportResult:
    """Export a trained run as `fmt` into the new directory `out`.

    dtype (merged and base): f32 (default), f16 or bf16. quant (gguf only): f16 (default), q8_0
    or f32. `base` writes the run's base model, not the specialist: serve it together with the
    `peft` export of this run (and of any other run on the same base).
    """
    out = Path(out)
    dtype, quant = _check_options(fmt, dtype, quant, out)
    run_dir = open_run(run)
    config = run_dir.config()
    record = run_dir.record()
    run_dir.weights_dir()  # a clear RunError before any work when adapter/ and model/ are missing
    base_name = base_model_name(base_of(record) or {"kind": "hf-dir", "path": config.model.base})
    name = _slug(config.name or run_dir.path.name)

    with _staging(out) as tmp:
        if fmt == "merged":
            checks = _export_merged(run_dir, config, tmp, dtype, check_samples)
            usage = _usage_merged(out)
        elif fmt == "gguf":
            filename = f"{name}-{quant}.gguf"
            checks = _export_gguf(run_dir, config, record, tmp / filename, quant, name)
            usage = _usage_gguf(out / filename)
        elif fmt == "peft":
            checks = write_peft_dir(run_dir, tmp, base_name)
            usage = _usage_peft(out, base_name, name, checks.get("rank"))
        else:
            checks = _export_base(run_dir, config, tmp, dtype, check_samples)
            usage = _usage_base(out, name)
        if fmt == "base":
            card = base_card(record=record, base_name=base_name, usage=usage, checks=checks)
        else:
            card = model_card(
                run=run_dir,
                config=config,
                record=record,
                fmt=fmt,
                base_name=base_name,
                usage=usage,
                checks=checks,
            )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return ExportResult(out=out, format=fmt, size_bytes=size, files=files, checks=checks, usage=usage)


def _check_options(fmt: str, dtype: str | None, quant: str | None, out: Path) -> tuple[str, str]:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if dtype is not None and fmt not in ("merged", "base"):
        raise ConfigError("--dtype applies to --format merged and base only (GGUF uses --quant)")
    if quant is not None and fmt != "gguf":
        raise ConfigError("--quant applies to --format gguf only")
    dtype, quant = dtype or "f32", quant or "f16"
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if quant not in QUANTS:
        raise ConfigError(f"unknown GGUF quantisation '{quant}'; choose one of {', '.join(QUANTS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; choose a new --out directory")
    return dtype, quant


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temp directory beside `out`, renamed to `out` on success and removed on any failure,
    together with any parent directories this export created."""
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        _publish_permissions(tmp)
        if out.exists():
            out.rmdir()  # empty (checked up front); rename cannot replace a directory otherwise
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # deepest first
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def _publish_permissions(tmp: Path) -> None:
    """mkdtemp (and some writers) create owner-only files; give the export the user's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    for path in tmp.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _export_merged(run: RunDir, config: Any, tmp: Path, dtype: str, samples: int) -> dict[str, Any]:
    loaded = load_trained(run, config)
    tokens = min(config.eval.max_new_tokens or CHECK_TOKENS, CHECK_TOKENS)
    reference = Reference(loaded, sample_prompts(run, config, samples), tokens)
    merge(loaded)
    save_merged(loaded, tmp, dtype)
    del loaded
    return {"dtype": dtype, **check_agreement(reference, tmp, dtype)}


def _export_base(run: RunDir, config: Any, tmp: Path, dtype: str, samples: int) -> dict[str, Any]:
    """The base exactly as training and `specialize generate` load it (for a bundled GGUF, the
    dequantized conversion), re-saved with `save_pretrained` so its tensor names are the ones
    vLLM reads, and checked like a merged export against the base in memory."""
    loaded = load_base(config)
    tokens = min(config.eval.max_new_tokens or CHECK_TOKENS, CHECK_TOKENS)
    reference = Reference(loaded, sample_prompts(run, config, samples), tokens)
    save_merged(loaded, tmp, dtype)
    del loaded
    return {"dtype": dtype, **check_agreement(reference, tmp, dtype)}


def _export_gguf(
    run: RunDir, config: Any, record: RunRecord, path: Path, quant: str, name: str
) -> dict[str, Any]:
    loaded = load_trained(run, config)
    model = merge(loaded)
    check_supported(model.config, loaded.tokenizer)
    tensors = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    source = GGUFSource(
        tensors=tensors,
        config=model.config,
        tokenizer=loaded.tokenizer,
        name=name,
        tokenizer_pre=source_tokenizer_pre(base_of(record)),
    )
    write_gguf(source, path, quant)
    return {"quant": quant, **verify_gguf(path, source, quant)}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _usage_merged(out: Path) -> str:
    return f"""Plain `transformers` (no peft, no specialize):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{out}")
model = AutoModelForCausalLM.from_pretrained("{out}")
messages = [{{"role": "user", "content": "..."}}]  # add the system prompt below, if any
ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
reply = model.generate(ids, max_new_tokens=64, do_sample=False)
print(tok.decode(reply[0, ids.shape[1]:], skip_special_tokens=True))
```

The directory also works as a model for vLLM (`vllm serve {out}`) and for llama.cpp's
`convert_hf_to_gguf.py`."""


def _usage_gguf(path: Path) -> str:
    return f"""With [llama.cpp](https://github.com/ggml-org/llama.cpp) (the chat template is in the file):

```sh
llama-cli -m {path} -cnv --temp 0          # interactive chat
llama-server -m {path} --jinja --port 8080  # OpenAI-compatible API on :8080
```

With llama-cpp-python:

```python
from llama_cpp import Llama

llm = Llama(model_path="{path}")
out = llm.create_chat_completion(messages=[{{"role": "user", "content": "..."}}], temperature=0)
print(out["choices"][0]["message"]["content"])
```"""


def _usage_base(out: Path, name: str) -> str:
    return f"""The base model only (no adapter): serve it with vLLM and attach this run's `peft` export,
and any other adapter trained on the same base:

```sh
specialize export RUN --format peft --out {name}-peft
vllm serve {out} --enable-lora --lora-modules {name}={name}-peft
curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{name}", "messages": [{{"role": "user", "content": "..."}}], "temperature": 0}}'
```

It also loads with plain `transformers` (`AutoModelForCausalLM.from_pretrained("{out}")`)."""


def _usage_peft(out: Path, base: str, name: str, rank: int | None) -> str:
    rank_flag = f" --max-lora-rank {rank}" if rank and rank > 16 else ""
    return f"""Serve it with vLLM next to other adapters on the same base (one GPU, many adapters):

```sh
vllm serve {base} --enable-lora --lora-modules {name}={out}{rank_flag}
curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
  -d '{{"model": "{name}", "messages": [{{"role": "user", "content": "..."}}], "temperature": 0}}'
```

Offline, or when the base is a GGUF file (the bundled model is one: the adapter was trained on its
dequantized weights, which differ slightly from the hub release), serve the base exactly as trained
on: `specialize export RUN --format base --out base/`, then `vllm serve base/ ...`.

With LoRAX, start `lorax-launcher --model-id {base}` and send `"adapter_id": "{out}",
"adapter_source": "local"` with each request. With peft:

```python
from peft import AutoPeftModelForCausalLM

model = AutoPeftModelForCausalLM.from_pretrained("{out}")  # loads {base}, then the adapter
```"""
