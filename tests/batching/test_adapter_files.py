"""`batching.adapter_files`: a PEFT adapter directory read into slot matrices, and every way its
files can be wrong for the served model, each a clear `AdapterLoadError` before any slot changes."""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from specialize.batching.adapter_files import AdapterDir, AdapterLoadError, read_adapter
from specialize.batching.adapters import ResidentAdapters


def _base(inner: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(up=nn.Linear(8, inner), down=nn.Linear(inner, 8)))


def _save_adapter(path: Path, base: nn.Module, **config) -> nn.Module:
    """A PEFT LoRA adapter of `base` with random (non-zero) weights, saved under `path`."""
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["up", "down"], "init_lora_weights": False}
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(**{**settings, **config}))
    peft_model.save_pretrained(path)
    return peft_model


def _edit_config(path: Path, **changes) -> None:
    file = path / "adapter_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def test_the_slot_matrices_carry_pefts_scaling_and_give_its_forward(tmp_path):
    base = _base()
    peft_model = _save_adapter(tmp_path, base)
    weights = read_adapter(tmp_path, base, "k")
    assert weights.rank == 4 and set(weights.modules) == {"up", "down"} and weights.nbytes > 0
    x = torch.randn(3, 8)
    with torch.no_grad():
        hidden = base.up(x) + (x @ weights.modules["up"][0]) @ weights.modules["up"][1]
        ours = base.down(hidden) + (hidden @ weights.modules["down"][0]) @ weights.modules["down"][1]
        torch.testing.assert_close(ours, peft_model.eval()(x))


def _b_weight(path: Path, module: str) -> torch.Tensor:
    tensors = load_file(str(path / "adapter_model.safetensors"))
    return next(t for name, t in tensors.items() if name.endswith(f"{module}.lora_B.weight"))


def test_rslora_and_alpha_pattern_scale_as_peft_does(tmp_path):
    base = _base()
    _save_adapter(tmp_path / "plain", base)
    _save_adapter(tmp_path / "rs", base, use_rslora=True)
    _save_adapter(tmp_path / "pattern", base, alpha_pattern={"down": 32})
    plain, rs, pattern = (read_adapter(tmp_path / n, base, n) for n in ("plain", "rs", "pattern"))
    torch.testing.assert_close(plain.modules["up"][1], _b_weight(tmp_path / "plain", "up").t() * (8 / 4))
    torch.testing.assert_close(rs.modules["up"][1], _b_weight(tmp_path / "rs", "up").t() * (8 / math.sqrt(4)))
    torch.testing.assert_close(
        pattern.modules["down"][1], _b_weight(tmp_path / "pattern", "down").t() * (32 / 4)
    )
    torch.testing.assert_close(pattern.modules["up"][1], _b_weight(tmp_path / "pattern", "up").t() * (8 / 4))


def _weights_file(path: Path) -> Path:
    return path / "adapter_model.safetensors"


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda p: _weights_file(p).unlink(), "adapter_model.safetensors is missing"),
        (lambda p: (p / "adapter_config.json").write_text("{not json"), "unreadable adapter config"),
        (lambda p: (p / "adapter_config.json").unlink(), "unreadable adapter config"),
        (lambda p: _edit_config(p, peft_type="IA3"), "is not LoRA"),
        (lambda p: _edit_config(p, fan_in_fan_out=True), "'fan_in_fan_out' adapters are not supported"),
        (lambda p: _edit_config(p, modules_to_save=["down"]), "modules_to_save"),
    ],
    ids=["no-weights", "bad-json", "no-config", "not-lora", "fan-in-fan-out", "modules-to-save"],
)
def test_a_spoilt_directory_is_refused_with_the_file_named(tmp_path, spoil, message):
    base = _base()
    _save_adapter(tmp_path, base)
    spoil(tmp_path)
    with pytest.raises(AdapterLoadError, match=message) as caught:
        read_adapter(tmp_path, base, "k")
    assert str(tmp_path) in str(caught.value)


def _rewrite_tensors(path: Path, change) -> None:
    tensors = load_file(str(_weights_file(path)))
    save_file(change(dict(tensors)), str(_weights_file(path)))


def test_tensors_that_are_not_lora_weights_are_refused(tmp_path):
    base = _base()
    _save_adapter(tmp_path, base)
    _rewrite_tensors(tmp_path, lambda t: {**t, "base_model.model.up.bias": torch.zeros(16)})
    with pytest.raises(AdapterLoadError, match="'base_model.model.up.bias' is not a LoRA A/B weight"):
        read_adapter(tmp_path, base, "k")


def test_a_module_without_its_b_weight_is_refused(tmp_path):
    base = _base()
    _save_adapter(tmp_path, base)
    _rewrite_tensors(tmp_path, lambda t: {k: v for k, v in t.items() if not k.endswith("down.lora_B.weight")})
    with pytest.raises(AdapterLoadError, match="module 'down' lacks its lora_A or lora_B weight"):
        read_adapter(tmp_path, base, "k")


def test_an_adapter_of_another_model_is_refused(tmp_path):
    _save_adapter(tmp_path, _base(inner=16))
    with pytest.raises(AdapterLoadError, match="trained on another model"):
        read_adapter(tmp_path, _base(inner=32), "k")  # same layer names, other shapes
    other = nn.Sequential(OrderedDict(left=nn.Linear(8, 16), right=nn.Linear(16, 8)))
    with pytest.raises(AdapterLoadError, match="has no layer 'down'"):
        read_adapter(tmp_path, other, "k")
    not_linear = nn.Sequential(OrderedDict(up=nn.Linear(8, 16), down=nn.Embedding(16, 8)))
    with pytest.raises(AdapterLoadError, match="'down' is a Embedding; only Linear layers are served"):
        read_adapter(tmp_path, not_linear, "k")


def test_a_rank_over_the_servers_limit_is_refused(tmp_path):
    base = _base()
    _save_adapter(tmp_path, base, r=8, lora_alpha=16)
    with pytest.raises(AdapterLoadError, match="rank 8 exceeds the server's limit of 4"):
        read_adapter(tmp_path, base, "k", max_rank=4)
    assert read_adapter(tmp_path, base, "k", max_rank=8).rank == 8


def test_a_refused_adapter_leaves_every_slot_as_it_was(tmp_path):
    """The files are read and checked before a slot is written: a bad adapter neither becomes
    resident nor disturbs the one already serving."""
    base = _base()
    _save_adapter(tmp_path / "good", base)
    _save_adapter(tmp_path / "bad", base)
    _rewrite_tensors(tmp_path / "bad", lambda t: {k: v for k, v in t.items() if "down" not in k or "A" in k})
    resident = ResidentAdapters(base, capacity=2, max_rank=4)
    good = AdapterDir(key="good", path=tmp_path / "good")
    slot = resident.acquire(good)
    layers = {name: (layer.lora_a.clone(), layer.lora_b.clone()) for name, layer in resident.layers.items()}
    with pytest.raises(AdapterLoadError):
        resident.acquire(AdapterDir(key="bad", path=tmp_path / "bad"))
    assert resident.slot_of("bad") is None and resident.slot_of("good") == slot
    for name, layer in resident.layers.items():
        assert torch.equal(layer.lora_a, layers[name][0]) and torch.equal(layer.lora_b, layers[name][1])
