"""Output constraints in the batching engine: a constrained row replies with exactly one label or JSON
valid under its schema, whatever shares its batch, and a free row gets the same tokens as if no
constrained row were there (different adapters, greedy and sampled rows mixed)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from specialize.batching.engine import Engine
from specialize.batching.requests import SamplingParams
from specialize.constrain import OutputContract, labels_contract, schema_contract
from specialize.models.chat import render_prompt
from specialize.registry import AdapterRegistry
from tests.conftest import make_adapter_run

EOS = 2  # <|im_end|> in the tiny tokenizer
LABELS = ["card_arrival", "exchange_rate", "declined_card_payment"]
PREFIXED = ["card", "card_arrival", "card_arrival_late", "card_arrival_late_again"]
SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 50},
        "tag": {"enum": ["x", "yy"]},
        "name": {"type": "string", "maxLength": 4},
    },
    "required": ["ok", "n", "tag", "name"],
    "additionalProperties": False,
}
PROMPTS = ["My card payment was declined.", "What is the exchange rate?", "hi", "card lost"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialize.batching.adapters import ResidentAdapters

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = Engine(model, tokenizer, adapters=ResidentAdapters(model, capacity=2), max_batch=32)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def alpha(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("constrained-serve")
    return AdapterRegistry(root / "reg").add(
        "alpha", make_adapter_run(root / "alpha", tiny_model_dir, seed=1)
    )


@pytest.fixture(scope="module")
def prompts(engine):
    tok = engine.tokenizer
    return [
        tok(render_prompt(tok, [{"role": "user", "content": p}]), add_special_tokens=False)["input_ids"]
        for p in PROMPTS
    ]


def batch(engine, jobs, on_event=None):
    """Run (prompt_ids, params, adapter) jobs as one batch (queued while the engine is paused)."""
    engine.pause()
    try:
        handles = [
            engine.submit(ids, params, adapter, on_event(i) if on_event else None)
            for i, (ids, params, adapter) in enumerate(jobs)
        ]
    finally:
        engine.resume()
    return [h.wait(60) for h in handles]


def greedy(max_tokens=10, **kw):
    return SamplingParams(max_tokens=max_tokens, temperature=0, **kw)


def test_constrained_and_free_rows_share_a_batch(engine, alpha, prompts):
    labels = engine.compile(labels_contract(LABELS))
    prefixed = engine.compile(labels_contract(PREFIXED))
    schema = engine.compile(schema_contract(SCHEMA))
    free = [
        (prompts[0], greedy(ignore_eos=True), None),
        (prompts[1], greedy(ignore_eos=True), alpha),
        (
            prompts[2],
            SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=3, ignore_eos=True),
            alpha,
        ),
        (prompts[3], SamplingParams(max_tokens=10, temperature=0.8, seed=4, ignore_eos=True), None),
    ]
    constrained = [
        (prompts[0], greedy(40, constraint=labels), None),
        (prompts[1], greedy(40, constraint=labels), alpha),
        (prompts[2], greedy(40, constraint=prefixed), alpha),
        (prompts[3], greedy(80, constraint=schema), None),
        (prompts[0], SamplingParams(max_tokens=80, temperature=1.0, seed=5, constraint=schema), alpha),
        (
            prompts[1],
            SamplingParams(max_tokens=40, temperature=1.0, top_p=0.5, seed=6, constraint=labels),
            None,
        ),
    ]
    free_alone = [c.token_ids for c in batch(engine, free)]
    constrained_alone = [engine.generate(*job).text for job in constrained]
    n = len(free)  # free and constrained rows alternate in the batch
    mixed = batch(
        engine, [job for pair in zip(free, constrained[:n], strict=True) for job in pair] + constrained[n:]
    )
    mixed_free, mixed_constrained = mixed[0 : 2 * n : 2], mixed[1 : 2 * n : 2] + mixed[2 * n :]

    assert [c.token_ids for c in mixed_free] == free_alone  # no constrained neighbour changes a free row
    assert all(c.finish_reason == "length" and len(c.token_ids) == 10 for c in mixed_free)
    assert [c.text for c in mixed_constrained] == constrained_alone
    assert all(c.finish_reason == "stop" for c in mixed_constrained)
    texts = [c.text for c in mixed_constrained]
    assert texts[0] in LABELS and texts[1] in LABELS and texts[2] in PREFIXED and texts[5] in LABELS
    for text in (texts[3], texts[4]):
        jsonschema.validate(json.loads(text), SCHEMA)
    assert engine.compile(OutputContract("none")) is None and engine.compile(None) is None


@pytest.mark.parametrize("seed", range(6))
def test_sampled_rows_stay_in_their_contract(engine, alpha, prompts, seed):
    labels = engine.compile(labels_contract(PREFIXED))
    schema = engine.compile(schema_contract(SCHEMA))
    sampled = {"temperature": 1.5, "seed": seed}
    out = batch(
        engine,
        [(p, SamplingParams(max_tokens=40, constraint=labels, **sampled), alpha) for p in prompts]
        + [
            (p, SamplingParams(max_tokens=90, constraint=schema, top_p=0.95, **sampled), None)
            for p in prompts
        ],
    )
    assert all(c.finish_reason == "stop" for c in out)
    assert all(c.text in PREFIXED for c in out[: len(prompts)])
    for c in out[len(prompts) :]:
        jsonschema.validate(json.loads(c.text), SCHEMA)


@pytest.fixture
def biased(engine):
    """Add a fixed bias to the tiny model's logits while the test runs."""
    handles = []

    def _bias(token_bias):
        bias = torch.zeros(engine.model.lm_head.out_features)
        for token, value in token_bias.items():
            bias[token] = value
        handles.append(engine.model.lm_head.register_forward_hook(lambda module, args, out: out + bias))

    yield _bias
    for handle in handles:
        handle.remove()


def test_a_complete_reply_ends_its_row_with_stop(engine, prompts, biased):
    tok = engine.tokenizer
    only = engine.compile(labels_contract(["card_arrival_late_again"]))
    done = engine.generate(prompts[0], greedy(40, constraint=only))
    # Nothing can follow the one label: the row ends there, without a step for end-of-turn.
    assert (done.text, done.finish_reason) == ("card_arrival_late_again", "stop")
    assert EOS not in done.token_ids and tok.decode(done.token_ids) == done.text
    # ignore_eos cannot push a constrained row past its reply.
    assert engine.generate(prompts[0], greedy(40, constraint=only, ignore_eos=True)).text == done.text
    # A label that prefixes others ends on end-of-turn when the model picks it.
    biased({EOS: 30.0, **{t: 60.0 for t in tok("card", add_special_tokens=False)["input_ids"]}})
    short = engine.generate(prompts[1], greedy(40, constraint=engine.compile(labels_contract(PREFIXED))))
    assert (short.text, short.finish_reason, short.token_ids[-1]) == ("card", "stop", EOS)


def test_max_tokens_running_out_first_is_length(engine, prompts):
    only = engine.compile(labels_contract(["card_arrival_late_again"]))
    cut = engine.generate(prompts[0], greedy(1, constraint=only))
    assert cut.finish_reason == "length" and len(cut.token_ids) == 1
    assert cut.text and "card_arrival_late_again".startswith(cut.text)


def test_stop_strings_and_streaming_next_to_constrained_rows(engine, alpha, prompts):
    labels = engine.compile(labels_contract(LABELS))
    free = engine.generate(prompts[2], greedy(12, ignore_eos=True))
    stop = free.text[3:5]
    assert stop.strip()
    deltas: dict[int, list[str]] = {0: [], 1: []}

    def collect(i):
        return lambda event: deltas[i].append(event[1]) if event[0] == "delta" else None

    out = batch(
        engine,
        [
            (prompts[2], greedy(12, ignore_eos=True, stop=(stop,)), None),
            (prompts[0], greedy(40, constraint=labels), alpha),
        ],
        on_event=collect,
    )
    assert (out[0].text, out[0].finish_reason) == (free.text[: free.text.index(stop)], "stop")
    assert out[1].text in LABELS and "".join(deltas[1]) == out[1].text and "".join(deltas[0]) == out[0].text


def test_no_constrained_row_skips_the_mask(engine, alpha, prompts, monkeypatch):
    import specialize.batching.engine as engine_module

    def fail(*args):
        raise AssertionError("mask_logits called for a batch without a constrained row")

    before = [engine.generate(p, greedy(6, ignore_eos=True), alpha).token_ids for p in prompts]
    monkeypatch.setattr(engine_module, "mask_logits", fail)
    after = batch(engine, [(p, greedy(6, ignore_eos=True), alpha) for p in prompts])
    assert [c.token_ids for c in after] == before


# LoRA variants in the stacked slots ------------------------------------------------------------


def make_variant_run(root, model_dir, *, seed: int, use_rslora: bool, use_dora: bool):
    """Like conftest's make_adapter_run, for rsLoRA and DoRA: random A and B, and DoRA magnitudes
    moved away from the weight norms, so the scaling and the rescaling both change the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from specialize.models.registry import resolve_model, weights_fingerprint

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        init_lora_weights=False,
        use_rslora=use_rslora,
        use_dora=use_dora,
    )
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(torch.empty_like(param).uniform_(0.5, 1.5))
            elif "lora_" in name:
                param.normal_(0.0, 0.3)
    peft_model.save_pretrained(root / "adapter")
    ref = resolve_model(str(model_dir))
    meta = {"base_model": ref.to_dict(), "base_fingerprint": weights_fingerprint(ref)}
    (root / "run.json").write_text(json.dumps(meta))
    return root


def peft_greedy(model_dir, adapter_dir, prompt_ids, max_tokens=12):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            gen = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=EOS,
            )
            out.append(gen[0, len(ids) :].tolist())
    return out


def without_variant(adapter_dir, tmp_path):
    """A copy of the adapter read as plain LoRA: the flags off, DoRA's magnitudes dropped."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "as-plain"
    copy.mkdir()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config.update(use_rslora=False, use_dora=False)
    (copy / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if "magnitude" not in k}, copy / "adapter_model.safetensors")
    return copy


@pytest.mark.parametrize("flavour", ["rslora", "dora", "dora+rslora"])
def test_lora_variants_give_pefts_greedy_tokens_alone_and_mixed(tiny_model_dir, tmp_path, flavour):
    """rsLoRA's alpha/sqrt(r) scaling and DoRA's magnitudes, served from the stacked slots, give
    PEFT's own greedy tokens, alone and in a batch mixing them with a plain adapter and the base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialize.batching.adapters import ResidentAdapters

    reg = AdapterRegistry(tmp_path / "reg")
    run = make_variant_run(
        tmp_path / "v", tiny_model_dir, seed=11, use_rslora="rslora" in flavour, use_dora="dora" in flavour
    )
    records = {
        "variant": reg.add("variant", run),
        "plain": reg.add("plain", make_adapter_run(tmp_path / "p", tiny_model_dir, seed=12)),
        None: None,
    }
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    reference = {
        name: peft_greedy(tiny_model_dir, record.path if record else None, prompt_ids)
        for name, record in records.items()
    }
    # The test can tell: read as plain LoRA, the same weights give other tokens.
    assert (
        peft_greedy(tiny_model_dir, without_variant(records["variant"].path, tmp_path), prompt_ids)
        != (reference["variant"])
    )

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    served = Engine(model, tokenizer, adapters=ResidentAdapters(model, capacity=2), max_batch=16)
    served.start()
    try:
        params = greedy(12, ignore_eos=True)
        solo = {
            name: [served.generate(ids, params, record).token_ids for ids in prompt_ids]
            for name, record in records.items()
        }
        jobs = [(ids, params, record) for ids in prompt_ids for record in records.values()]
        done = iter(c.token_ids for c in batch(served, jobs))
        mixed: dict = {name: [] for name in records}
        for _ in prompt_ids:
            for name in records:
                mixed[name].append(next(done))
    finally:
        served.stop()
    assert solo == reference
    assert mixed == reference


def test_dora_slots_equal_pefts_forward_on_a_layer_with_bias(tmp_path):
    """The bias is outside DoRA's rescaling (PEFT subtracts it before scaling): checked on a biased
    layer, uniform and mixed with base rows, which must stay the bare base output."""
    import copy
    from collections import OrderedDict

    from peft import LoraConfig, get_peft_model
    from torch import nn

    from specialize.batching.adapter_files import read_adapter
    from specialize.batching.adapters import BatchedLoraLinear, LoraRouting

    torch.manual_seed(0)
    base = nn.Sequential(OrderedDict(lin=nn.Linear(16, 8, bias=True)))
    peft_model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=2, lora_alpha=4, target_modules=["lin"], use_dora=True, init_lora_weights=False),
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(torch.empty_like(param).uniform_(0.5, 1.5))
            elif "lora_" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(tmp_path)
    weights = read_adapter(tmp_path, base, "k")
    routing = LoraRouting()
    layer = BatchedLoraLinear(base.lin, routing, slots=2, rank=2)
    layer.set_slot(1, *weights.modules["lin"], weights.dora_scales["lin"])
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        expected, bare = peft_model.eval()(x), base.lin(x)
        routing.set([1, 1, 1])
        torch.testing.assert_close(layer(x), expected)
        routing.set([0, 1, 0])
        mixed = layer(x)
    torch.testing.assert_close(mixed[1], expected[1])
    assert torch.equal(mixed[0], bare[0]) and torch.equal(mixed[2], bare[2])
    layer.set_slot(1, None, None)  # a plain adapter or an empty slot takes DoRA's place
    assert 1 not in layer.dora_slots and bool((layer.dora_scale[1] == 1).all())


def test_over_a_bf16_base_the_update_is_pefts_float32_arithmetic(tmp_path):
    """Over a bf16 base PEFT keeps the adapter in float32 and adds its update to the base output
    with one rounding; the slots do the same, uniform and mixed: (nearly) every output equals
    PEFT's exactly and none is more than one bf16 step away. Rounding the update to bf16 first,
    as bf16 slots did, misses most outputs."""
    import copy
    from collections import OrderedDict

    from peft import LoraConfig, get_peft_model
    from torch import nn

    from specialize.batching.adapter_files import read_adapter
    from specialize.batching.adapters import BatchedLoraLinear, LoraRouting

    torch.manual_seed(0)
    base = nn.Sequential(OrderedDict(lin=nn.Linear(64, 48, bias=True))).to(torch.bfloat16)
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["lin"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                assert param.dtype == torch.float32  # PEFT's autocast_adapter_dtype
                param.normal_(0.0, 0.3)
    peft_model.save_pretrained(tmp_path)
    weights = read_adapter(tmp_path, base, "k")
    routing = LoraRouting()
    layer = BatchedLoraLinear(base.lin, routing, slots=3, rank=4)
    layer.set_slot(1, *weights.modules["lin"])
    layer.set_slot(2, *weights.modules["lin"])
    assert layer.lora_a.dtype == torch.float32
    x = torch.randn(8, 3, 64).to(torch.bfloat16)
    with torch.no_grad():
        expected = peft_model.eval()(x)
        a_t, b_t = weights.modules["lin"]
        bf16_first = base.lin(x) + (x @ a_t.to(torch.bfloat16)) @ b_t.to(torch.bfloat16)
        routing.set([1] * 8)
        uniform = layer(x)
        routing.set([1, 2] * 4)
        mixed = layer(x)
    step = expected.abs().float() * 2**-7  # one bf16 step (8 significant bits) at that magnitude
    for out in (uniform, mixed):
        assert out.dtype == torch.bfloat16
        assert bool(((out.float() - expected.float()).abs() <= step).all())
        assert (out == expected).float().mean() >= 0.95
    assert (bf16_first == expected).float().mean() < 0.8


def test_mixed_batches_read_each_rows_current_adapter_as_the_batch_changes():
    """The row buffers copy only the rows whose slot changed between mixed batches: every
    output must still be its own slot's LoRA, through growing and shrinking batches, uniform
    batches in between, a slot whose weights change (invalidate), and a layer that joins late
    (it missed epochs, so it gathers every row), and transient passes (prefills) in between that
    must leave the batch's buffers as they were."""
    from torch import nn

    from specialize.batching.adapters import BatchedLoraLinear, LoraRouting

    torch.manual_seed(0)
    routing = LoraRouting()
    slots, rank = 5, 3

    def make_layer() -> BatchedLoraLinear:
        layer = BatchedLoraLinear(nn.Linear(6, 4, bias=False), routing, slots=slots, rank=rank)
        for s in range(1, slots):
            layer.set_slot(s, torch.randn(6, rank), torch.randn(rank, 4))
        return layer

    def expected(layer: BatchedLoraLinear, x: torch.Tensor, rows: list[int]) -> torch.Tensor:
        out = layer.base(x).clone()
        for i, s in enumerate(rows):
            out[i] += x[i] @ layer.lora_a[s].T @ layer.lora_b[s]
        return out

    first, late = make_layer(), None
    batches = [[1, 2], [1, 2, 3, 4], [4, 2, 3, 1], [2, 2, 2], [3, 0, 3, 1], [1], [3, 0, 3, 1, 2, 4, 4]]
    steps = [*batches, "swap", [3, 0, 3, 1], ("transient", [4, 1]), [3, 0, 3, 1], [0, 3]]
    with torch.no_grad():
        for step, rows in enumerate(steps):
            if rows == "swap":  # slot 3 gets another adapter, as ResidentAdapters._install does
                for layer in (first, late):
                    layer.set_slot(3, torch.randn(6, rank), torch.randn(rank, 4))
                routing.invalidate()
                continue
            if step == 3:
                late = make_layer()
            transient = isinstance(rows, tuple)
            if transient:
                rows = rows[1]
                held = [(layer._rows_ab[1].clone(), layer._rows_ab[2].clone()) for layer in (first, late)]
            routing.set(rows, transient=transient)
            x = torch.randn(len(rows), 2, 6)
            for layer in (first, late) if late is not None else (first,):
                torch.testing.assert_close(layer(x), expected(layer, x, rows))
            if transient:
                for layer, (a, b) in zip((first, late), held, strict=True):
                    assert torch.equal(layer._rows_ab[1], a) and torch.equal(layer._rows_ab[2], b)


def test_free_rows_neither_mix_a_one_adapter_batch_nor_cost_a_copy():
    """A free slot of the running batch (None) takes whatever its row buffers hold: a batch of
    one adapter with free slots stays on the plain-matmul path, and in a mixed batch a free row
    keeps its buffers, so its next occupant with the same adapter needs no copy."""
    from torch import nn

    from specialize.batching.adapters import BatchedLoraLinear, LoraRouting

    torch.manual_seed(1)
    routing = LoraRouting()
    layer = BatchedLoraLinear(nn.Linear(6, 4, bias=False), routing, slots=4, rank=2)
    for s in range(1, 4):
        layer.set_slot(s, torch.randn(6, 2), torch.randn(2, 4))

    def check(rows: list[int | None]) -> None:
        x = torch.randn(len(rows), 1, 6)
        out = layer(x)
        for i, s in enumerate(rows):
            if s is not None:
                want = layer.base(x[i]) + x[i] @ layer.lora_a[s].T @ layer.lora_b[s]
                torch.testing.assert_close(out[i], want)

    with torch.no_grad():
        routing.set([2, None, 2, None])
        assert routing.uniform == 2
        check([2, None, 2, None])
        routing.set([1, 2, 3])
        check([1, 2, 3])
        routing.set([1, None, 3])
        assert routing.uniform is None and routing.held[:3] == [1, 2, 3] and len(routing.changed_rows) == 0
        check([1, None, 3])
        routing.set([1, 2, 3])  # the free row's next occupant brings back the adapter it held
        assert len(routing.changed_rows) == 0
        check([1, 2, 3])
        routing.set([None, None])
        assert routing.uniform == 0


def test_joining_rows_take_the_free_slots_holding_their_adapters(tiny_model_dir, tmp_path):
    """A second wave of requests for the same adapters, arriving in another order, lands in the
    slots whose row buffers already hold each adapter (no weights copied) and still gets PEFT's
    greedy tokens; rows whose adapter no free slot holds fill the remaining lowest slots."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialize.batching.adapters import ResidentAdapters

    reg = AdapterRegistry(tmp_path / "reg")
    records = [
        reg.add(f"a{i}", make_adapter_run(tmp_path / f"a{i}", tiny_model_dir, seed=20 + i)) for i in range(3)
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
    reference = [peft_greedy(tiny_model_dir, r.path, prompt_ids, max_tokens=6) for r in records]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    served = Engine(model, tokenizer, adapters=ResidentAdapters(model, capacity=4), max_batch=8)
    routing = served.adapters.routing
    params = greedy(6, ignore_eos=True)

    def step(copied: list[int]) -> None:
        epoch = routing.epoch
        served._iterate()
        if routing.epoch != epoch:
            copied.extend(routing.changed_rows.tolist())

    def wave(order: list[int]) -> tuple[list[list[int]], list[int]]:
        handles = [served.submit(prompt_ids[i], params, records[i]) for i in order]
        copied: list[int] = []
        while served.running or served.queue_depth:
            step(copied)
        return [h.wait(0).token_ids for h in handles], copied

    first, _ = wave([0, 1, 2])
    second, copied = wave([2, 0, 1])
    assert copied == []  # every row found its adapter's weights where it landed
    assert [served.adapters.held_slot(s) for s in range(3)] == [
        served.adapters.slot_of(r.key) for r in records
    ]
    assert first == [reference[i][i] for i in range(3)]
    assert second == [reference[i][i] for i in (2, 0, 1)]
    # One request joining while another decodes: rows 0 and 1 are free, and a1 takes row 1,
    # which holds it, not the lowest free row.
    copied = []
    short, long = greedy(2, ignore_eos=True), greedy(6, ignore_eos=True)
    handles = [served.submit(prompt_ids[i], p, records[i]) for i, p in ((0, short), (1, short), (2, long))]
    while served.running == 3 or served.queue_depth:
        step(copied)
    assert served._batch.occupied == [2]
    late = served.submit(prompt_ids[1], params, records[1])
    step(copied)
    assert served._batch.occupied == [1, 2]
    while served.running:
        step(copied)
    assert copied == [] and late.wait(0).token_ids == reference[1][1]
    assert [h.wait(0).token_ids for h in handles] == [
        reference[i][i][:n] for i, n in ((0, 2), (1, 2), (2, 6))
    ]
    third, copied = wave([1, 2, 1])  # a1 twice: one of its rows finds its buffers, one needs a copy
    assert third == [reference[1][1], reference[2][2], reference[1][1]] and copied == [0]
