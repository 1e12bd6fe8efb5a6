"""Drift monitoring: calibrated on unshifted traffic, powerful on shifted traffic, honest about
small windows, and wired end to end (request log -> CLI -> drift.json/.html -> exit code 3).

Reference data are banking-like requests generated from templates; live traffic is held-out
rows of the same generator (no drift), non-banking questions (domain drift), or held-out rows
made four times longer (length drift). Everything uses the hashed TF-IDF embedder."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from specialize.config import DriftConfig, RunConfig, save_config
from specialize.data.example import Example, Source
from specialize.data.split import Splits, save_splits
from specialize.monitor.checks import compare
from specialize.monitor.drift import (
    drift_for_adapter,
    drift_over_time,
    evaluated_outputs,
    load_drift_config,
)
from specialize.monitor.drift import run_drift as detect_drift
from specialize.monitor.embed import HashedTfidfEmbedder
from specialize.monitor.features import featurize
from specialize.monitor.profile import build_profile, load_profile, profile_from_examples, write_profile
from specialize.monitor.statistics import binomial_sf, hypergeom_sf
from specialize.records.run import RunRecord
from specialize.run_dir import RunDir
from specialize.serve.request_log import LoggedRequest, parse_since, prompt_text, read_window

INTENTS = {
    "card_arrival": [
        "my new card still hasn't arrived after {n} days",
        "when will my {card} card be delivered",
        "I ordered a card {when} and it is not here yet",
        "how long does card delivery take to {place}",
    ],
    "transfer_failed": [
        "my transfer of {amount} {cur} to {person} failed",
        "why did the bank transfer {when} not go through",
        "the money I sent to {person} bounced back",
        "transfer to my {acct} account was declined",
    ],
    "exchange_rate": [
        "what exchange rate do you use for {cur}",
        "how much is {amount} {cur} in euros",
        "is the {cur} rate better on weekends",
        "why was the exchange rate different {when}",
    ],
    "top_up": [
        "how do I top up my account with {method}",
        "my top up of {amount} {cur} is still pending",
        "can I add money using {method}",
        "top up failed {when} with my {card} card",
    ],
    "pin_blocked": [
        "my pin is blocked after {n} wrong tries",
        "how can I unblock my {card} card pin",
        "I forgot my pin, what should I do",
        "entered the wrong pin {n} times {when}",
    ],
    "refund": [
        "I still haven't received my refund from {shop}",
        "how long does a refund of {amount} {cur} take",
        "the merchant {shop} says they refunded me {when}",
        "where is the refund for my {card} card payment",
    ],
}
FILL = {
    "n": [str(i) for i in range(2, 15)],
    "card": ["debit", "credit", "virtual", "physical", "contactless"],
    "when": ["yesterday", "last week", "this morning", "two days ago", "on Monday", "last month"],
    "place": ["Spain", "the UK", "Germany", "my office", "France"],
    "amount": ["20", "50", "100", "250", "1,000", "75.50"],
    "cur": ["GBP", "USD", "EUR", "pounds", "dollars"],
    "person": ["my landlord", "my sister", "a friend", "my employer", "John"],
    "acct": ["savings", "joint", "business", "other"],
    "method": ["Apple Pay", "a cheque", "bank transfer", "cash"],
    "shop": ["Amazon", "the airline", "a hotel", "the online store", "my gym"],
}
PREFIX = ["", "", "hi, ", "hello, ", "please help: ", "urgent: ", "quick question, "]
SUFFIX = ["", "", "?", ".", " thanks", " - can you help?", " please"]

OUT_OF_DOMAIN = [
    "How long should I boil an egg for a runny yolk?",
    "What's a good substitute for buttermilk in pancakes?",
    "Can I freeze cooked rice and reheat it later?",
    "How do I make a sourdough starter from scratch?",
    "Which spices go well with roasted cauliflower?",
    "Why did my bread not rise in the oven?",
    "Who won the football world cup in 2014?",
    "How many players are on a basketball team on the court?",
    "What is the offside rule in soccer?",
    "How do I improve my marathon time?",
    "What muscles does a deadlift work?",
    "Is swimming or cycling better for bad knees?",
    "How do I reverse a list in Python?",
    "What does a segmentation fault mean in C?",
    "How can I undo the last git commit but keep the changes?",
    "Why is my React component rendering twice?",
    "What's the difference between TCP and UDP?",
    "How do I center a div with CSS flexbox?",
    "Explain big O notation with an example.",
    "How do I read a CSV file with pandas?",
    "What is the capital city of Australia?",
    "Why is the sky blue during the day?",
    "How far is the moon from the earth?",
    "What causes the northern lights?",
    "Can you recommend a good science fiction novel?",
    "Who painted the ceiling of the Sistine Chapel?",
    "How do I get rid of aphids on my tomato plants?",
    "How often should I water succulents in winter?",
    "What is the best time of year to visit Japan?",
    "How do I stop my puppy from biting my hands?",
    "What should I feed a pet rabbit?",
    "How do I change a flat tyre on my bike?",
    "Write a haiku about autumn leaves.",
    "How do vaccines train the immune system?",
    "How do I remove a red wine stain from a carpet?",
    "How do I tune a guitar without a tuner?",
    "Which planet has the most moons?",
    "What is photosynthesis?",
    "Recommend a board game for four players.",
    "Why do onions make you cry?",
]


def banking(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        intent = rng.choice(list(INTENTS))
        text = rng.choice(INTENTS[intent])
        text = text.format(**{k: rng.choice(v) for k, v in FILL.items() if "{" + k + "}" in text})
        rows.append((rng.choice(PREFIX) + text + rng.choice(SUFFIX), intent))
    return rows


def examples(rows: list[tuple[str, str]]) -> list[Example]:
    return [
        Example([{"role": "user", "content": t}], c, Source("gen", i + 1)) for i, (t, c) in enumerate(rows)
    ]


def log_rows(texts, completions, start: float = 1_700_000_000.0, chat: bool = True):
    return [
        LoggedRequest(
            id=i + 1,
            ts=start + 60 * i,
            prompt=json.dumps([{"role": "user", "content": t}]) if chat else t,
            completion=c,
            status=200,
        )
        for i, (t, c) in enumerate(zip(texts, completions, strict=True))
    ]


@pytest.fixture(scope="module")
def data():
    rows = banking(2400, seed=1)
    train, held_out = rows[:1200], rows[1200:]
    profile = profile_from_examples(examples(train), embedder="hashed", sample_size=200)
    return profile, train, held_out


def test_in_domain_traffic_does_not_alert(data):
    profile, _, held_out = data
    window = held_out[:80]
    report = detect_drift(profile, log_rows([t for t, _ in window], [c for _, c in window]))
    assert report.level in ("ok", "warn"), report.message
    assert report.level == "ok", report.message  # a warn here would be a 1-in-20 event for this fixed window
    assert {c.name for c in report.checks} == {
        "input_length",
        "non_ascii",
        "digits",
        "oov",
        "embedding",
        "labels",
        "invalid_outputs",
    }
    assert report.embedder == "hashed-tfidf-512" and report.length_unit == "words"
    assert all(c.alert_threshold == pytest.approx(0.01 / 7) for c in report.checks)


def test_out_of_domain_traffic_alerts(data):
    profile, train, _ = data
    labels = [c for _, c in train[: len(OUT_OF_DOMAIN)]]  # a classifier still answers with some label
    report = detect_drift(profile, log_rows(OUT_OF_DOMAIN, labels))
    assert report.level == "alert"
    embedding = report.check("embedding")
    assert embedding.level == "alert" and embedding.effect > 0.9  # domain classifier AUC
    assert report.check("oov").level == "alert"


def test_longer_requests_alert(data):
    profile, _, held_out = data
    rng = random.Random(3)
    texts = [" ".join(t for t, _ in rng.sample(held_out, 4)) for _ in range(40)]
    report = detect_drift(profile, log_rows(texts, [c for _, c in held_out[:40]]))
    assert report.level == "alert"
    length = report.check("input_length")
    assert length.level == "alert" and length.effect > 0.8 and length.extra["psi"] > 1


def test_output_checks_alert_on_label_shift_and_invalid_outputs(data):
    profile, _, held_out = data
    texts = [t for t, _ in held_out[:60]]
    one_label = detect_drift(profile, log_rows(texts, ["refund"] * 60))
    assert one_label.check("labels").level == "alert" and one_label.level == "alert"
    invalid = detect_drift(
        profile,
        log_rows(
            texts, ["I think this is about a card." if i % 3 else c for i, (_, c) in enumerate(held_out[:60])]
        ),
    )
    check = invalid.check("invalid_outputs")
    assert check.level == "alert" and check.extra["invalid"] == 40


def test_evaluated_outputs_are_the_reference_for_output_checks(tmp_path, data):
    """A weak model answers 'refund' too often and invents labels; live traffic answered the same
    way is not drift when the run's evaluation shows the same behaviour."""
    profile, _, held_out = data
    rng = random.Random(7)

    def weak(label: str) -> str:
        r = rng.random()
        return "refund" if r < 0.4 else "card_not_working" if r < 0.65 else label

    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    outputs = [weak(c) for _, c in held_out[:200]]
    (eval_dir / "report.json").write_text(
        json.dumps(
            {
                "contenders": [
                    {"name": "zero-shot", "role": "zero-shot", "predictions": ["x"] * 200},
                    {"name": "fine-tuned", "role": "fine-tuned", "predictions": outputs},
                ]
            }
        )
    )
    assert evaluated_outputs(tmp_path) == outputs and evaluated_outputs(tmp_path / "nothing") is None
    live = log_rows([t for t, _ in held_out[300:380]], [weak(c) for _, c in held_out[300:380]])
    against_eval = detect_drift(profile, live, reference_outputs=outputs)
    assert against_eval.level == "ok", against_eval.message
    assert against_eval.check("invalid_outputs").test == "Fisher exact (one-sided)"
    assert against_eval.check("labels").extra["reference"] == "fine-tuned outputs on the test split"
    against_training = detect_drift(profile, live)
    assert against_training.check("labels").level == "alert"
    assert against_training.check("invalid_outputs").level == "alert"


def test_exact_tails():
    from math import comb

    for total, marked, drawn in ((20, 7, 9), (50, 3, 40), (12, 12, 5)):
        for k in range(0, drawn + 2):
            exact = sum(
                comb(marked, x) * comb(total - marked, drawn - x) for x in range(k, drawn + 1)
            ) / comb(total, drawn)
            assert hypergeom_sf(k, total, marked, drawn) == pytest.approx(exact, abs=1e-12)
    for k in range(0, 12):
        exact = sum(comb(10, x) * 0.3**x * 0.7 ** (10 - x) for x in range(k, 11))
        assert binomial_sf(k, 10, 0.3) == pytest.approx(exact, abs=1e-12)


def test_false_alarm_rate_on_unshifted_windows(data):
    """200 windows of held-out traffic: at most 5% may alert (Bonferroni makes it ~1% or less)."""
    profile, _, held_out = data
    pool = featurize(log_rows([t for t, _ in held_out], [c for _, c in held_out]), profile)
    seeds, window = 200, 40
    alerts = warns = 0
    started = time.perf_counter()
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        report = compare(
            profile,
            pool.take(rng.choice(len(pool), window, replace=False)),
            DriftConfig(seed=seed),
            plots=False,
        )
        alerts += report.level == "alert"
        warns += report.level in ("warn", "alert")
    assert alerts / seeds <= 0.05, f"{alerts} false alarms in {seeds} unshifted windows"
    assert warns / seeds <= 0.10, f"{warns} warnings in {seeds} unshifted windows"
    assert time.perf_counter() - started < 60


def test_power_over_seeds(data):
    """Windows of 30: out-of-domain and 4x longer traffic alert every time."""
    profile, _, held_out = data
    ood = featurize(log_rows(OUT_OF_DOMAIN, ["refund"] * len(OUT_OF_DOMAIN)), profile)
    rng = random.Random(5)
    long_texts = [" ".join(t for t, _ in rng.sample(held_out, 4)) for _ in range(200)]
    longer = featurize(log_rows(long_texts, [c for _, c in held_out[:200]]), profile)
    for seed in range(20):
        r = np.random.default_rng(seed)
        for live in (ood, longer):
            report = compare(
                profile,
                live.take(r.choice(len(live), 30, replace=False)),
                DriftConfig(seed=seed),
                plots=False,
            )
            assert report.level == "alert"


def test_empty_or_tiny_window_is_not_a_verdict(data):
    profile, _, held_out = data
    for rows in ([], log_rows([t for t, _ in held_out[:12]], [c for _, c in held_out[:12]])):
        report = detect_drift(profile, rows)
        assert report.level == "not_enough_data" and not report.alert
        assert report.message.startswith("not enough data") and "30 needed" in report.message
    hashes_only = [replace(r, prompt=None, completion=None) for r in log_rows(["x"] * 40, ["refund"] * 40)]
    report = detect_drift(profile, hashes_only)
    assert report.level == "not_enough_data" and "text" in report.message


def test_drift_over_time_finds_the_shift(data):
    profile, train, held_out = data
    rows = log_rows(
        [t for t, _ in held_out[:90]] + OUT_OF_DOMAIN,
        [c for _, c in held_out[:90]] + [c for _, c in train[:40]],
    )
    windows = drift_over_time(profile, rows, DriftConfig(min_window=32), n_windows=4)
    assert [w.n for w in windows] == [33, 33, 64]  # the short tail joins the window before it
    assert [w.level for w in windows][:2] != ["alert", "alert"] and windows[-1].level == "alert"


def test_json_task_checks_fields_and_parse_failures():
    rng = random.Random(0)
    outs = [
        json.dumps(
            {
                "name": rng.choice("ABC"),
                "amount": rng.randint(1, 99),
                **({"note": "x"} if rng.random() < 0.5 else {}),
            }
        )
        for _ in range(400)
    ]
    rows = [
        (f"extract the payment {i} from {rng.choice(['Ann', 'Bo', 'Cy'])}", o) for i, o in enumerate(outs)
    ]
    profile = profile_from_examples(examples(rows[:300]), embedder="hashed")
    assert profile.task == "json" and profile.json_fields.fields[:2] == ["amount", "name"]
    ok = detect_drift(profile, log_rows([t for t, _ in rows[300:360]], [o for _, o in rows[300:360]]))
    assert ok.check("json_fields").level == "ok" and ok.check("invalid_outputs").level == "ok"
    broken = detect_drift(
        profile, log_rows([t for t, _ in rows[300:360]], ['{"name": "A"'] * 30 + ['{"name": "A"}'] * 30)
    )
    assert broken.check("invalid_outputs").level == "alert" and broken.check("json_fields").level == "alert"


# ----------------------------------------------------------------------------- log and profile


def make_log(path: Path, rows: list[LoggedRequest]) -> Path:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE requests(id INTEGER PRIMARY KEY, ts REAL, model TEXT, adapter TEXT, prompt_tokens INT, "
        "completion_tokens INT, latency_ms REAL, prompt TEXT NULL, completion TEXT NULL, prompt_hash TEXT, "
        "completion_hash TEXT, status INT)"
    )
    conn.executemany(
        "INSERT INTO requests(ts, model, adapter, prompt_tokens, completion_tokens, latency_ms, prompt, completion, "
        "prompt_hash, completion_hash, status) VALUES (?, ?, ?, 10, 2, 5.0, ?, ?, 'h', 'h', ?)",
        [
            (
                r.ts,
                r.adapter or "base",
                r.adapter,
                r.prompt,
                r.completion,
                200 if r.status is None else r.status,
            )
            for r in rows
        ],
    )
    conn.commit()
    conn.close()
    return path


def test_read_window_filters_and_orders(tmp_path):
    rows = log_rows([f"q{i}" for i in range(10)], ["a"] * 10, start=1000.0)
    rows = [replace(row, adapter="bank" if i % 2 == 0 else "other") for i, row in enumerate(rows)]
    rows[0] = replace(rows[0], status=500)
    db = make_log(tmp_path / "requests.db", rows)
    got = read_window(db, adapter="bank")
    assert [prompt_text(r.prompt) for r in got] == ["q0", "q2", "q4", "q6", "q8"]
    assert [prompt_text(r.prompt) for r in read_window(db, adapter="bank", limit=2)] == ["q6", "q8"]
    assert len(read_window(db, since=1000.0 + 60 * 5)) == 5
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200 and parse_since("1700000000") == 1.7e9
    assert (
        prompt_text(
            json.dumps(
                [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                    {"role": "user", "content": "last"},
                ]
            )
        )
        == "last"
    )
    assert prompt_text("[not json") == "[not json"
    from specialize.errors import ConfigError, DataError

    with pytest.raises(DataError, match="not found"):
        read_window(tmp_path / "missing.db")
    with pytest.raises(ConfigError, match="--since"):
        parse_since("yesterday-ish")


def test_drift_config_from_file_or_run_config(tmp_path):
    from specialize.errors import ConfigError

    (tmp_path / "drift.yaml").write_text("alert_alpha: 0.001\nmin_window: 50\n")
    assert load_drift_config(path=tmp_path / "drift.yaml").min_window == 50
    (tmp_path / "config.yaml").write_text("name: x\nmonitor:\n  warn_alpha: 0.1\n")
    assert load_drift_config(tmp_path).warn_alpha == 0.1
    assert load_drift_config(tmp_path / "elsewhere") == DriftConfig()
    (tmp_path / "bad.yaml").write_text("alert_alfa: 0.001\n")
    with pytest.raises(ConfigError, match="alert_alfa"):
        load_drift_config(path=tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="alert_alpha must not exceed"):
        (tmp_path / "worse.yaml").write_text("alert_alpha: 0.2\n")
        load_drift_config(path=tmp_path / "worse.yaml")


def make_run(tmp_path: Path, rows: list[tuple[str, str]]) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    save_config(RunConfig(name="bank", data={"train": "x.jsonl"}), run.config_file)
    save_splits(Splits(train=examples(rows)), run.splits)
    run.write_record(RunRecord(task="classification", labels=sorted({c for _, c in rows})))
    return run


def test_profile_of_a_run_with_a_tokenizer(tmp_path, tiny_tokenizer, data):
    _, train, _ = data
    run = make_run(tmp_path, train[:200])
    profile = build_profile(run, tiny_tokenizer, embedder="hashed")
    assert profile.length_unit == "tokens" and profile.tokenizer
    feats = profile.sample.features
    assert len(feats.input_tokens) == 200 and min(feats.input_tokens) > min(feats.input_words)
    assert set(profile.labels.counts) == set(INTENTS) and profile.n_train == 200
    # Leave-one-out OOV: a word seen in no other training row counts as unknown for its row.
    assert 0 < np.mean(feats.oov) < 0.1
    path = write_profile(run, embedder="hashed")
    assert path == run.profile and load_profile(run.path).length_unit == "words"
    assert load_profile(run.adapter).n_train == 200  # an adapter dir finds its run's profile
    rows = log_rows([t for t, _ in train[:40]], [c for _, c in train[:40]])
    report = detect_drift(profile, rows, tokenizer=tiny_tokenizer)
    assert report.length_unit == "tokens"


def test_hashed_embedder_is_deterministic_and_normalised():
    model = HashedTfidfEmbedder().fit(["card arrived", "transfer failed", "exchange rate"])
    a, b = model.embed(["my card has not arrived", ""]), model.embed(["my card has not arrived", ""])
    assert a.shape == (2, 512) and np.allclose(a, b)
    assert np.isclose(np.linalg.norm(a[0]), 1.0) and not a[1].any()
    near, far = model.embed(["my card hasnt arrived yet", "recipe for banana bread"])
    assert a[0] @ near > a[0] @ far


# --------------------------------------------------------------------------------------- CLI


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def cli():
    # The real `specialize` app: its `profile` and `drift` commands as the dispatch table wires
    # them (importing specialize.cli.monitor first would also run into the import cycle
    # specialize.cli -> commands -> specialize.cli.common while the CLI package is reorganised).
    from specialize.cli import app

    return app


def test_cli_profile_and_drift_exit_codes(tmp_path, data, cli):
    _, train, held_out = data
    run = make_run(tmp_path, train)
    runner = CliRunner()
    result = runner.invoke(cli, ["profile", str(run.path), "--embedder", "hashed"])
    assert result.exit_code == 0, result.output
    assert "hashed-tfidf-512" in result.output and run.profile.is_file()

    rows = [
        replace(r, adapter="bank")
        for r in log_rows([t for t, _ in held_out[:60]], [c for _, c in held_out[:60]])
    ]
    rows += [replace(r, adapter="other") for r in log_rows(OUT_OF_DOMAIN, ["refund"] * 40)]
    db = make_log(tmp_path / "requests.db", rows)
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        ok = runner.invoke(
            cli, ["drift", str(run.path), "--log", str(db), "--adapter", "bank", "--webhook", url]
        )
        assert ok.exit_code == 0, ok.output
        assert "ok: no drift" in ok.output and "posted" in ok.output
        assert _Hook.received[-1]["level"] == "ok" and _Hook.received[-1]["adapter"] == "bank"

        out = tmp_path / "other"
        bad = runner.invoke(
            cli,
            [
                "drift",
                str(run.path),
                "--log",
                str(db),
                "--adapter",
                "other",
                "--out",
                str(out),
                "--webhook",
                "http://127.0.0.1:9/closed",
            ],
        )
        assert bad.exit_code == 3, bad.output
        assert "alert" in bad.output and "webhook" in bad.output  # the failed post is reported, not raised
    finally:
        server.shutdown()
    report = json.loads((out / "drift.json").read_text())
    assert report["level"] == "alert" and report["embedder"] == "hashed-tfidf-512"
    page = (out / "drift.html").read_text()
    for plot in ("plot-input_length", "plot-embedding", "plot-labels"):
        assert f'id="{plot}"' in page
    assert (run.path / "drift" / "drift.html").is_file()

    tiny = runner.invoke(cli, ["drift", str(run.path), "--log", str(db), "--adapter", "nobody"])
    assert tiny.exit_code == 0 and "not enough data" in tiny.output


def test_drift_for_adapter_gives_the_server_a_dict(tmp_path, data):
    _, train, _ = data
    run = make_run(tmp_path, train)
    write_profile(run, embedder="hashed")
    db = make_log(
        tmp_path / "requests.db",
        [replace(r, adapter="bank") for r in log_rows(OUT_OF_DOMAIN, ["refund"] * 40)],
    )
    result = drift_for_adapter(run.adapter, db, "bank", window=100)
    assert result["level"] == "alert" and result["adapter"] == "bank"
    assert json.dumps(result) and all("plot" not in c for c in result["checks"])
