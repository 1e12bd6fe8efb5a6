"""Every checkpoint we write names its tensors the way third-party loaders expect.

transformers re-ties a tied embedding from either name, so it cannot tell a badly named checkpoint
from a good one; vLLM can: for a tied model it skips `lm_head.*` and fills only
`model.embed_tokens.weight`, and a checkpoint holding the shared tensor only as `lm_head.weight`
leaves the embedding empty (every prompt then decodes to token 0). llama.cpp's converter reads
the embedding too. So tied checkpoints must store `model.embed_tokens.weight` and no `lm_head`,
untied ones both, and transformers must load each back with equal logits.

Checked here: the GGUF -> safetensors cache (from a tiny GGUF written with the `gguf` package,
and a cache left by the old conversion), the merged export, the base export, and a full
fine-tune's model/ directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from specialize.models.load import CHECKPOINT_FORMAT, FORMAT_FILE, cache_is_current, hf_directory
from specialize.models.registry import resolve_model
from tests.conftest import make_tiny_model

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
PROMPT = "What is the exchange rate?"


def tensor_names(directory: Path) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            names.update(handle.keys())
    assert names, f"no safetensors weights in {directory}"
    return names


def assert_names(directory: Path, *, tied: bool) -> set[str]:
    names = tensor_names(directory)
    assert EMBED in names, sorted(names)[:5]
    if tied:
        assert HEAD not in names, "a tied checkpoint must not store lm_head (vLLM ignores it)"
    else:
        assert HEAD in names
    return names


def load_back(directory: Path):
    """Load with plain transformers and insist nothing was missing, unexpected or re-initialised."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model.eval()


def logits(model, tokenizer):
    import torch

    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.inference_mode():
        return model(input_ids=ids).logits


def tiny(tokenizer, *, tied: bool, seed: int = 0):
    """The conftest tiny Llama, with tied or separate input and output embeddings."""
    from transformers import LlamaForCausalLM

    model = make_tiny_model(tokenizer, seed=seed)
    if not tied:
        import torch

        config = model.config
        config.tie_word_embeddings = False
        torch.manual_seed(seed + 1)
        model = LlamaForCausalLM(config)
    model.config.architectures = [type(model).__name__]
    return model.eval()


def write_tiny_gguf(model, tokenizer, path: Path) -> Path:
    """An f32 GGUF of `model`, written by our llama.cpp exporter (the `gguf` package)."""
    from specialize.export.gguf import GGUFSource, write_gguf

    tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    source = GGUFSource(tensors=tensors, config=model.config, tokenizer=tokenizer, name="tiny")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(source, path, "f32")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SPECIALIZE_CACHE_DIR", str(root))
    return root


# --- the GGUF conversion cache ---------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gguf_conversion_names_and_logits(tiny_tokenizer, tmp_path, cache, tied):
    model = tiny(tiny_tokenizer, tied=tied)
    gguf_file = write_tiny_gguf(model, tiny_tokenizer, tmp_path / "gguf" / "tiny.gguf")

    converted = hf_directory(resolve_model(str(gguf_file)))

    assert converted.parent == cache / "models"
    assert_names(converted, tied=tied)
    assert json.loads((converted / FORMAT_FILE).read_text()) == {"version": CHECKPOINT_FORMAT}
    config = json.loads((converted / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    umask = os.umask(0)
    os.umask(umask)
    assert (converted / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # a shared cache
    reloaded = load_back(converted)
    if tied:
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    diff = (logits(reloaded, tiny_tokenizer) - logits(model, tiny_tokenizer)).abs().max()
    assert diff < 1e-5


def test_old_cache_is_detected_and_rewritten(tiny_tokenizer, tmp_path, cache):
    """A cache written by the old conversion (safetensors' save_model kept the tied tensor as
    lm_head.weight only, and no FORMAT marker) is converted again, not trusted."""
    from safetensors.torch import save_model

    model = tiny(tiny_tokenizer, tied=True)
    gguf_file = write_tiny_gguf(model, tiny_tokenizer, tmp_path / "gguf" / "tiny.gguf")
    ref = resolve_model(str(gguf_file))
    target = hf_directory(ref)
    # Recreate what the old code left behind, in the same place.
    for file in target.iterdir():
        if file.suffix == ".safetensors" or file.name in (FORMAT_FILE, "model.safetensors.index.json"):
            file.unlink()
    old = make_tiny_model(tiny_tokenizer, seed=0)
    save_model(old, str(target / "model.safetensors"))
    assert tensor_names(target) >= {HEAD} and EMBED not in tensor_names(target)
    assert not cache_is_current(target)

    again = hf_directory(ref)

    assert again == target and cache_is_current(target)
    assert_names(target, tied=True)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")], "stale or temp dirs left"
    diff = (logits(load_back(target), tiny_tokenizer) - logits(model, tiny_tokenizer)).abs().max()
    assert diff < 1e-5


def test_current_cache_is_reused(tiny_tokenizer, tmp_path, cache):
    model = tiny(tiny_tokenizer, tied=True)
    ref = resolve_model(str(write_tiny_gguf(model, tiny_tokenizer, tmp_path / "gguf" / "tiny.gguf")))
    target = hf_directory(ref)
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert hf_directory(ref) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp


# --- what training and export write ----------------------------------------------------------


def test_save_checkpoint_names(tiny_tokenizer, tmp_path):
    """The conversion's saving step on its own, for both kinds of model."""
    from specialize.models.load import save_checkpoint

    for tied in (True, False):
        model = tiny(tiny_tokenizer, tied=tied, seed=3)
        out = tmp_path / str(tied)
        save_checkpoint(model, tiny_tokenizer, out)
        assert_names(out, tied=tied)
        assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
        diff = (logits(load_back(out), tiny_tokenizer) - logits(model, tiny_tokenizer)).abs().max()
        assert diff == 0.0


def test_merged_export_names(tiny_model_dir, tiny_tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from specialize.export import export_run
    from tests.export.test_run import make_adapter, write_run

    run = write_run(tmp_path / "runs" / "tied-spec", tiny_model_dir)
    make_adapter(tiny_model_dir, run / "adapter")

    result = export_run(run, "merged", tmp_path / "merged", check_samples=1)

    assert_names(result.out, tied=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    expected = logits(PeftModel.from_pretrained(base, run / "adapter").eval(), tiny_tokenizer)
    assert (logits(load_back(result.out), tiny_tokenizer) - expected).abs().max() < 1e-4


def test_base_export_names(tiny_model_dir, tiny_tokenizer, tmp_path):
    from specialize.export import export_run
    from tests.export.test_run import make_adapter, write_run

    run = write_run(tmp_path / "runs" / "tied-spec", tiny_model_dir)
    make_adapter(tiny_model_dir, run / "adapter")

    result = export_run(run, "base", tmp_path / "base")

    assert_names(result.out, tied=True)
    expected = logits(load_back(tiny_model_dir), tiny_tokenizer)
    assert (logits(load_back(result.out), tiny_tokenizer) - expected).abs().max() == 0.0


def test_full_fine_tune_model_dir_names(tiny_model_dir, tiny_tokenizer, tmp_path):
    """train/sft.py saves model/ with save_pretrained; a tied model keeps model.embed_tokens."""
    from specialize.train.sft import train
    from tests.train.conftest import tiny_config

    rows = [{"text": f"message {i} about {w}", "label": w} for i, w in enumerate(["a", "b"] * 6)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_config(tiny_model_dir, data, max_steps=1)
    config.method.kind = "full"

    train(config, tmp_path / "run")

    model_dir = tmp_path / "run" / "model"
    assert_names(model_dir, tied=True)
    reloaded = load_back(model_dir)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
