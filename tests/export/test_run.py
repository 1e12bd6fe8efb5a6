"""Export of a tiny run: merged equals base + adapter, GGUF round trip, PEFT dir, clean failures."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from specialize.config import DataConfig, MethodConfig, ModelConfig, RunConfig, save_config
from specialize.data.example import Example, Source
from specialize.errors import ConfigError, RunError
from specialize.export import ExportResult, export_run
from specialize.export.gguf import TOLERANCE
from specialize.export.peft_dir import base_model_name
from specialize.models.registry import resolve_model

LABELS = ["card_arrival", "exchange_rate", "top_up_by_cheque"]
REQUESTS = [
    "I am still waiting on my card?",
    "What is the exchange rate?",
    "How do I top up with a cheque?",
    "My card payment was declined.",
]


def write_run(path: Path, base_dir: Path, *, kind: str = "lora", headline: str | None = None) -> Path:
    path.mkdir(parents=True)
    config = RunConfig(
        name=path.name,
        data=DataConfig(system_prompt="Classify the banking request.", train="train.jsonl"),
        model=ModelConfig(base=str(base_dir)),
        method=MethodConfig(kind=kind, lora_r=4, lora_alpha=8),
    )
    save_config(config, path / "config.yaml")
    meta = {
        "base_model": resolve_model(str(base_dir)).to_dict(),
        "method": kind,
        "task": "classification",
        "labels": LABELS,
        "examples": {"train": 40, "val": 5, "test": len(REQUESTS)},
        "steps": 3,
        "train_loss": 1.25,
        "val_loss": 1.5,
    }
    (path / "run.json").write_text(json.dumps(meta))
    (path / "splits").mkdir()
    rows = [
        Example(
            [
                {"role": "system", "content": "Classify the banking request."},
                {"role": "user", "content": text},
            ],
            LABELS[i % len(LABELS)],
            Source("test.jsonl", i + 1),
        ).to_dict()
        for i, text in enumerate(REQUESTS)
    ]
    (path / "splits" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if headline is not None:
        (path / "eval").mkdir()
        (path / "eval" / "report.json").write_text(json.dumps({"headline": headline}))
    return path


def make_adapter(base_dir: Path, target: Path, seed: int = 1) -> None:
    """A LoRA adapter with random, non-zero B so merging changes the weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(target)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    run = write_run(
        tmp_path_factory.mktemp("runs") / "tiny-spec",
        tiny_model_dir,
        headline="fine-tuned: accuracy: 0.875 vs 0.56 few-shot; vs_few_shot +0.31",
    )
    make_adapter(tiny_model_dir, run / "adapter")
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> Path:
    """A full fine-tune: model/ holds the whole (changed) model and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    run = write_run(tmp_path_factory.mktemp("runs") / "tiny-full", tiny_model_dir, kind="full")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(run / "model")
    tiny_tokenizer.save_pretrained(run / "model")
    return run


def _logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=ids).logits


def _ids(tokenizer):
    import torch

    return torch.tensor([tokenizer("What is the exchange rate?")["input_ids"]])


def _no_partial(parent: Path, name: str) -> None:
    """Neither the output nor a staging directory beside it is left behind."""
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# --- merged ----------------------------------------------------------------------------------


def test_merged_equals_base_plus_adapter(lora_run, tiny_model_dir, tiny_tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_run(lora_run, "merged", tmp_path / "merged", check_samples=4)

    assert isinstance(result, ExportResult)
    assert result.checks["agreement"] == 1.0 and result.checks["samples"] == 4
    assert result.checks["max_logit_diff"] < 1e-4
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(result.files)
    assert result.size_bytes == sum(p.stat().st_size for p in result.out.rglob("*") if p.is_file())
    umask = os.umask(0)
    os.umask(umask)
    assert (result.out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkdtemp's 0600

    ids = _ids(tiny_tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(result.out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    base_logits = _logits(base, ids)
    with_adapter = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    expected = _logits(with_adapter, ids)
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter is not a no-op
    assert (_logits(merged, ids) - expected).abs().max() < 1e-4
    assert AutoTokenizer.from_pretrained(result.out).chat_template == tiny_tokenizer.chat_template

    card = (result.out / "README.md").read_text()
    for needle in (
        str(tiny_model_dir.resolve()),
        "LoRA",
        "| rank r | 4 |",
        "accuracy: 0.875",
        "Classify the banking request.",
        "Intended use and limits",
        "agreement: 1",
    ):
        assert needle in card, needle


def test_merged_of_full_fine_tune_is_a_copy(full_run, tmp_path):
    from safetensors.torch import load_file

    result = export_run(full_run, "merged", tmp_path / "m", dtype="f32", check_samples=2)

    assert result.checks["agreement"] == 1.0
    source, exported = (
        load_file(full_run / "model" / "model.safetensors"),
        load_file(result.out / "model.safetensors"),
    )
    assert set(source) == set(exported)
    assert all((source[k] == exported[k]).all() for k in source)
    card = (result.out / "README.md").read_text()
    assert "full fine-tuning" in card and "has not been evaluated" in card


def test_merged_f16_halves_the_weights(lora_run, tmp_path):
    f16 = export_run(lora_run, "merged", tmp_path / "f16", dtype="f16", check_samples=1)
    assert json.loads((f16.out / "config.json").read_text())["dtype"] == "float16"
    assert f16.checks["samples"] == 1 and f16.checks["dtype"] == "f16"


# --- GGUF ------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_gguf_round_trip(lora_run, tiny_model_dir, tiny_tokenizer, tmp_path, quant):
    import gguf
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_run(lora_run, "gguf", tmp_path / "gguf", quant=quant)

    checks = result.checks
    assert checks["max_rel_error"] <= TOLERANCE[quant]
    if quant == "f32":
        assert checks["max_abs_error"] == 0.0
    gguf_file = result.out / f"tiny-spec-{quant}.gguf"
    assert sorted(result.files) == ["README.md", gguf_file.name]
    reader = gguf.GGUFReader(gguf_file)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.rope.dimension_count"] == 8
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.chat_template"] == tiny_tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == tiny_tokenizer.eos_token_id
    assert len(fields["tokenizer.ggml.merges"]) > 0
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names  # tied embeddings written once
    assert checks["tensors"] == len(names) == 2 + 2 * 9

    # An independent reader: transformers un-permutes q/k itself when loading a llama GGUF.
    from_gguf = AutoModelForCausalLM.from_pretrained(
        result.out, gguf_file=gguf_file.name, dtype=torch.float32
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = PeftModel.from_pretrained(base, lora_run / "adapter").merge_and_unload()
    want, got = merged.state_dict(), from_gguf.state_dict()
    for name, tensor in want.items():
        scale = tensor.abs().max().item() or 1.0
        assert (got[name] - tensor).abs().max().item() / scale <= TOLERANCE[quant] + 1e-7, name
    tokenizer = AutoTokenizer.from_pretrained(result.out, gguf_file=gguf_file.name)
    text = "<|im_start|>user\nMy card payment was declined, 42 times!<|im_end|>"
    assert tokenizer(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    assert "llama-cli -m" in (result.out / "README.md").read_text()


def test_gguf_generates_with_llama_cpp(lora_run, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    result = export_run(lora_run, "gguf", tmp_path / "g", quant="f16")
    llm = llama_cpp.Llama(model_path=str(next(result.out.glob("*.gguf"))), n_ctx=128, verbose=False)
    out = llm.create_completion("What is the exchange rate?", max_tokens=4, temperature=0)
    assert out["usage"]["completion_tokens"] >= 1


def test_gguf_unsupported_architecture_leaves_nothing(tmp_path, tiny_tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base = tmp_path / "tiny-qwen2"
    Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tiny_tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    run = write_run(tmp_path / "qwen-run", base)
    make_adapter(base, run / "adapter")
    out = tmp_path / "exports" / "nested" / "qwen-gguf"

    with pytest.raises(ConfigError, match="Llama-architecture.*Qwen2ForCausalLM"):
        export_run(run, "gguf", out)
    assert not (tmp_path / "exports").exists()


# --- PEFT ------------------------------------------------------------------------------------


def test_peft_dir_for_vllm(lora_run, tiny_model_dir, tiny_tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = export_run(lora_run, "peft", tmp_path / "adapter")

    assert sorted(result.files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((result.out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert result.checks["rank"] == 4 and result.checks["adapter_tensors"] > 0
    card = (result.out / "README.md").read_text()
    assert (
        f"vllm serve {tiny_model_dir.resolve()} --enable-lora --lora-modules tiny-spec={result.out}" in card
    )

    ids = _ids(tiny_tokenizer)
    exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.out)
    original = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_run / "adapter"
    )
    assert (_logits(exported.eval(), ids) - _logits(original.eval(), ids)).abs().max() == 0


def test_peft_names_the_hub_model_for_the_bundled_base():
    base = {
        "ref": "smollm2-135m-instruct",
        "kind": "bundled-gguf",
        "path": "/x/SmolLM2.gguf",
        "model_id": "smollm2-135m-instruct",
    }
    assert base_model_name(base) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (
        base_model_name({"ref": "org/name", "kind": "hf-cache", "path": "/c/s", "model_id": "org/name"})
        == "org/name"
    )


def test_peft_of_full_fine_tune_is_a_clear_error(full_run, tmp_path):
    with pytest.raises(RunError, match="no adapter"):
        export_run(full_run, "peft", tmp_path / "p")
    _no_partial(tmp_path, "p")


# --- base ------------------------------------------------------------------------------------


def test_base_dir_for_vllm(lora_run, tiny_model_dir, tiny_tokenizer, tmp_path):
    """The run's base as a plain HF directory: config, tokenizer with its chat template and
    safetensors, loading with equal logits; tied embeddings stored as model.embed_tokens."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_run(lora_run, "base", tmp_path / "base", check_samples=2)

    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
    } <= set(result.files)
    assert not any("adapter" in f for f in result.files)
    assert result.checks["agreement"] == 1.0 and result.checks["samples"] == 2
    assert result.checks["max_logit_diff"] == 0.0 and result.checks["dtype"] == "f32"
    with safe_open(str(result.out / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    config = json.loads((result.out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert AutoTokenizer.from_pretrained(result.out).chat_template == tiny_tokenizer.chat_template
    data = json.loads((result.out / "tokenizer_config.json").read_text())
    assert data.get("chat_template") or (result.out / "chat_template.jinja").is_file()

    ids = _ids(tiny_tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    exported = AutoModelForCausalLM.from_pretrained(result.out).eval()
    assert (_logits(exported, ids) - _logits(base, ids)).abs().max() == 0

    card = (result.out / "README.md").read_text()
    assert f"vllm serve {result.out} --enable-lora --lora-modules tiny-spec=" in card
    assert "holds no fine-tuning" in card and "library_name: transformers" in card
    assert "agreement: 1" in card


def test_base_dtype_and_full_fine_tune(full_run, tmp_path):
    """--dtype applies to base as to merged; a full fine-tune's run still names its base."""
    result = export_run(full_run, "base", tmp_path / "b16", dtype="bf16", check_samples=1)
    assert json.loads((result.out / "config.json").read_text())["dtype"] == "bfloat16"
    assert result.checks["dtype"] == "bf16" and result.checks["samples"] == 1


def test_peft_card_points_to_the_base_export(lora_run, tmp_path):
    card = (export_run(lora_run, "peft", tmp_path / "p").out / "README.md").read_text()
    assert "--format base" in card


def test_base_card_says_a_gguf_base_is_not_the_hub_release():
    from specialize.export.card import base_card
    from specialize.records.run import RunRecord

    def recorded(kind: str, path: str) -> RunRecord:
        return RunRecord.model_validate(
            {"base_model": {"ref": path, "kind": kind, "path": path, "model_id": "m"}}
        )

    gguf = recorded("bundled-gguf", "/x/SmolLM2-135M-Instruct.Q4_1.gguf")
    card = base_card(record=gguf, base_name="HuggingFaceTB/SmolLM2-135M-Instruct", usage="u", checks={})
    assert "`SmolLM2-135M-Instruct.Q4_1.gguf`, dequantized" in card
    plain = base_card(record=recorded("hf-dir", "/m"), base_name="/m", usage="u", checks={})
    assert "dequantized" not in plain


def test_base_command(lora_run, tmp_path):
    import typer
    from typer.testing import CliRunner

    from specialize.cli.export import export

    app = typer.Typer()
    app.command()(export)
    out = tmp_path / "base"
    ok = CliRunner().invoke(
        app, [str(lora_run), "--format", "base", "--out", str(out), "--check-samples", "1"]
    )
    assert ok.exit_code == 0, ok.output
    assert "greedy agreement with the base as loaded for training: 1/1" in ok.output
    assert (out / "model.safetensors").is_file()


# --- bad input -------------------------------------------------------------------------------


def test_bad_run_directory(tmp_path):
    with pytest.raises(RunError, match="not found"):
        export_run(tmp_path / "nope", "merged", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a run directory"):
        export_run(tmp_path / "empty", "merged", tmp_path / "out")
    _no_partial(tmp_path, "out")


def test_missing_adapter(lora_run, tmp_path):
    run = tmp_path / "no-adapter"
    run.mkdir()
    for name in ("config.yaml", "run.json"):
        shutil.copy(lora_run / name, run / name)
    for fmt in ("merged", "gguf", "peft", "base"):
        with pytest.raises(RunError, match="no trained weights"):
            export_run(run, fmt, tmp_path / "out")
    _no_partial(tmp_path, "out")


def test_existing_output_and_bad_options(lora_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_run(lora_run, "peft", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ConfigError, match="unknown export format"):
        export_run(lora_run, "onnx", tmp_path / "x")
    with pytest.raises(ConfigError, match="--quant applies to --format gguf"):
        export_run(lora_run, "merged", tmp_path / "x", quant="q8_0")
    with pytest.raises(ConfigError, match="unknown GGUF quantisation"):
        export_run(lora_run, "gguf", tmp_path / "x", quant="q4_k")
    with pytest.raises(ConfigError, match="--dtype applies to --format merged and base"):
        export_run(lora_run, "peft", tmp_path / "x", dtype="f16")
    _no_partial(tmp_path, "x")
    empty = tmp_path / "empty-out"
    empty.mkdir()
    assert export_run(lora_run, "peft", empty).out == empty  # an empty directory is fine


def test_command(lora_run, tmp_path):
    import typer
    from typer.testing import CliRunner

    from specialize.cli.export import export

    app = typer.Typer()
    app.command()(export)
    runner = CliRunner()
    ok = runner.invoke(app, [str(lora_run), "--format", "peft", "--out", str(tmp_path / "p")])
    assert ok.exit_code == 0, ok.output
    assert "exported" in ok.output
    bad = runner.invoke(app, [str(tmp_path / "missing"), "--format", "peft", "--out", str(tmp_path / "q")])
    assert bad.exit_code == 2 and "run directory not found" in bad.output
