"""The studio's pages and routes over a runs folder, through FastAPI's test client: what every
page shows, that a damaged run never breaks the rest, that no path leaves its folder, the
token, live metrics, training jobs, the playground and the review flow."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest
from fastapi.testclient import TestClient

from specialize.records.drift import DriftReport, DriftWindow
from specialize.studio.app import create_app
from specialize.studio.settings import StudioSettings
from tests.review.fake_run import N_TEST, errors_of, make_fake_run


@pytest.fixture
def runs(tmp_path):
    folder = tmp_path / "runs"
    make_fake_run(folder, "demo")
    (tmp_path / "data.jsonl").write_text(
        "".join(
            json.dumps({"text": f"row {i} about card", "label": ["card", "fees"][i % 2]}) + "\n"
            for i in range(20)
        )
    )
    return folder


def client_for(runs, **kwargs) -> TestClient:
    settings = StudioSettings.for_host(runs, kwargs.pop("host", "127.0.0.1"), **kwargs)
    return TestClient(create_app(settings))


def test_runs_page_lists_runs_and_shows_a_broken_one_without_failing(runs):
    broken = runs / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("train: {epochs: [unclosed\n")
    (runs / "not-a-run").mkdir()
    (runs / "group" / "inner").mkdir(parents=True)
    (runs / "group" / "inner" / "config.yaml").write_text("seed: 1\n")
    page = client_for(runs).get("/")
    assert page.status_code == 200
    assert "/runs/demo" in page.text and "finished" in page.text and "classification" in page.text
    assert "fine-tuned: 0.83 accuracy" in page.text
    assert "broken" in page.text and "config.yaml" in page.text  # its problem, in its row
    assert "not a run directory" in page.text and 'data-status="folder"' in page.text
    assert f"it holds runs (inner): open them with specialize studio --runs {runs / 'group'}" in page.text


def test_run_page_shows_config_data_curves_and_every_example(runs):
    page = client_for(runs).get("/runs/demo")
    assert page.status_code == 200
    text = page.text
    assert 'id="config"' in text and "max_seq_len: 64" in text
    assert "near-duplicate of line 2" in text  # the data report's file:line finding
    points = json.loads(re.search(r'id="loss-points">(.*?)</script>', text, re.S).group(1))
    assert len(points) == 20 and points[4]["eval_loss"] is not None
    rows = re.findall(r'<tr data-label="(\w*)" data-wrong="([^"]*)"', text)
    assert len(rows) == N_TEST
    wrong_rows = [i for i, (_, wrong) in enumerate(rows) if "fine-tuned" in wrong.split("\t")]
    assert wrong_rows == errors_of(make_run_dir(runs))
    assert 'class="confusion"' in text and 'data-reference="fees" data-reply="card"' in text


def make_run_dir(runs):
    from specialize.run_dir import RunDir

    return RunDir(runs / "demo")


def test_a_damaged_report_is_shown_and_the_rest_of_the_run_page_works(runs):
    (runs / "demo" / "eval" / "report.json").write_text("{not json")
    page = client_for(runs).get("/runs/demo")
    assert page.status_code == 200
    assert "not a readable EvalReport" in page.text
    assert "max_seq_len: 64" in page.text  # the config still shows
    assert client_for(runs).get("/").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "/runs/..%2F..%2Fetc",
        "/runs/%2Fetc",
        "/runs/.studio",
        "/runs/demo%2Fsplits",
        "/runs/outside",
        "/new?data=..%2F..%2F..%2Fetc%2Fpasswd",
        "/new?data=%2Fetc%2Fpasswd",
        "/new?data=runs%2Fdemo%2Fconfig.yaml",
        "/runs/..%2F..%2Fetc/metrics/stream",
        "/review/..%2Fdemo?reviewer=ada",
    ],
)
def test_path_parameters_cannot_leave_their_folder(runs, tmp_path, url):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "config.yaml").write_text("model: {}\n")
    (runs / "outside").symlink_to(outside)
    response = client_for(runs).get(url)
    assert response.status_code == 404, (url, response.text[:200])


def test_a_token_is_required_off_loopback(runs):
    client = client_for(runs, host="0.0.0.0")
    token = client.app.state.settings.token
    assert token and client.get("/").status_code == 401
    assert client.get("/", headers={"X-Studio-Token": "wrong"}).status_code == 401
    assert client.get("/", headers={"X-Studio-Token": token}).status_code == 200
    assert client.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get(f"/?token={token}").status_code == 200
    assert client.get("/runs/demo").status_code == 200  # the cookie set by ?token= lets the page's links work
    assert client_for(runs).app.state.settings.token is None  # loopback: none needed


def test_cross_origin_writes_are_refused(runs):
    client = client_for(runs)
    form = {"content-type": "application/x-www-form-urlencoded"}
    evil = client.post(
        "/new", content="data=data.jsonl&name=x", headers={**form, "Origin": "https://evil.example"}
    )
    assert evil.status_code == 403 and not (runs / "x").exists()
    same = client.post(
        "/review/demo", content="token=nope&verdict=1", headers={**form, "Origin": "http://testserver"}
    )
    assert same.status_code == 400  # reached the app (an unknown token), not refused


def test_metrics_stream_replays_the_log_and_ends_with_the_run(runs):
    with client_for(runs).stream("GET", "/runs/demo/metrics/stream") as response:
        body = "".join(response.iter_text())
    data = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    assert len(data) == 20 and data[0]["step"] == 1
    assert "event: done" in body


FAKE_TRAIN = """
import signal, sys, time, pathlib
out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "argv.txt").write_text(" ".join(sys.argv[1:]))
config = pathlib.Path(sys.argv[sys.argv.index("--config") + 1])
if config != out / "config.yaml":
    (out / "config.yaml").write_text(config.read_text())  # as training does first
signal.signal(signal.SIGINT, lambda *a: sys.exit(130))
for step in range(600):
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": %d, "loss": 1.0}\\n' % (step + 1))
    time.sleep(0.1)
"""


def test_new_run_checks_the_file_then_trains_cancels_and_resumes(runs, tmp_path):
    fake = tmp_path / "fake_python"  # stands in for the interpreter: `fake -m specialize train ...`
    fake.write_text(f"#!{sys.executable}\n" + FAKE_TRAIN)
    fake.chmod(0o755)
    app = create_app(StudioSettings.for_host(runs, "127.0.0.1"))
    app.state.jobs.python = str(fake)
    client = TestClient(app)
    page = client.get("/new")
    assert "data.jsonl" in page.text and "runs/demo" not in page.text  # the runs folder is not offered
    page = client.get("/new?data=data.jsonl")
    assert "--input-field" in page.text  # two-column data needs its columns named: said on the page
    page = client.get("/new?data=data.jsonl&input_field=text&output_field=label")
    assert "20 rows" in page.text and "0 errors" in page.text
    assert "Share cut for the test split" in page.text  # help from the config schema
    response = client.post(
        "/new",
        content="data=data.jsonl&name=fresh&data.input_field=text&data.output_field=label&train.max_steps=3&model.base=tiny&method.kind=lora",
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    job = app.state.jobs.get("fresh")
    deadline = time.time() + 20
    while not (runs / "fresh" / "argv.txt").is_file() and time.time() < deadline:
        time.sleep(0.1)
    argv = (runs / "fresh" / "argv.txt").read_text()
    assert argv.startswith("-m specialize train --config") and "--resume" not in argv
    assert "max_steps: 3" in app.state.jobs.config_file("fresh").read_text()
    assert "running" in client.get("/runs/fresh").text and 'id="cancel"' in client.get("/runs/fresh").text
    assert client.post("/runs/fresh/cancel", follow_redirects=False).status_code == 303
    assert not job.running
    page = client.get("/runs/fresh")
    assert "failed" in page.text and 'id="resume"' in page.text
    assert client.post("/runs/fresh/resume", follow_redirects=False).status_code == 303
    deadline = time.time() + 20
    while "--resume" not in (runs / "fresh" / "argv.txt").read_text() and time.time() < deadline:
        time.sleep(0.1)
    assert "--resume" in (runs / "fresh" / "argv.txt").read_text()
    app.state.jobs.cancel("fresh")
    dup = client.post(
        "/new",
        content="data=data.jsonl&name=demo",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert dup.status_code == 400 and "exists" in dup.text


def test_review_flow_over_http(runs):
    client = client_for(runs)
    assert "demo" in client.get("/review").text
    for _ in range(3):
        page = client.get("/review/demo?reviewer=ada")
        token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
        for name in ("zero-shot", "few-shot", "fine-tuned"):
            assert name not in page.text.split('id="judge"')[1].split("</form>")[0]  # names hidden
        answer = client.post(
            "/review/demo",
            content=f"token={token}&verdict=1&corrected=",
            headers={"content-type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert answer.status_code == 303
    human = json.loads((runs / "demo" / "eval" / "human.json").read_text())
    assert human["judgments"] == 3 and human["reviewers"] == ["ada"]
    assert "Human review" in client.get("/runs/demo").text
    exported = client.post("/review/demo/export")
    assert exported.status_code == 200 and "dpo.jsonl" in exported.text


def test_drift_and_adapters_pages(runs, tmp_path):
    report = DriftReport(
        level="warn",
        message="input length moved",
        n_rows=50,
        n_used=50,
        min_window=30,
        task="classification",
        embedder="tfidf",
        length_unit="chars",
        over_time=[
            DriftWindow(start=0, end=1, n=25, level="ok"),
            DriftWindow(start=1, end=2, n=25, level="warn"),
        ],
    )
    (runs / "demo" / "drift").mkdir()
    (runs / "demo" / "drift" / "drift.json").write_text(report.model_dump_json())
    client = client_for(runs, registry=tmp_path / "registry")
    page = client.get("/drift")
    assert "input length moved" in page.text and page.text.count('class="lvl-') == 2
    page = client.get("/adapters")
    assert page.status_code == 200 and "No adapters yet" in page.text


def test_playground_answers_with_the_adapter_and_the_base(tmp_path, tiny_model_dir):
    from tests.conftest import make_adapter_run

    runs = tmp_path / "runs"
    run = make_fake_run(runs, "tiny", model_dir=tiny_model_dir)
    make_adapter_run(run.path, tiny_model_dir, seed=1)
    client = client_for(runs)
    assert "tiny" in client.get("/playground").text
    replies = {}
    for model in ("fine-tuned", "base"):
        response = client.post(
            "/api/playground",
            json={
                "run": "tiny",
                "model": model,
                "free": True,
                "text": "where is my card?",
                "max_new_tokens": 6,
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == model and body["prompt_tokens"] > 0 and body["latency_ms"] > 0
        replies[model] = body["text"]
    assert replies["fine-tuned"] != replies["base"]  # the adapter was really switched off
    assert client.post("/api/playground", json={"run": "../x", "text": "hi"}).status_code == 404


def test_review_of_recent_traffic_from_the_request_log(runs, tmp_path):
    from specialize.serve.request_log import RequestLog

    log = RequestLog(tmp_path / "requests.sqlite")
    for model, reply in (("base", "it may be lost"), ("banking", "card_arrival")):
        log.record(
            model=model,
            adapter=None if model == "base" else model,
            endpoint="completions",
            prompt="where is my card?",
            completion=reply,
            prompt_tokens=4,
            completion_tokens=3,
            latency_ms=5.0,
            finish_reason="stop",
            status=200,
        )
    log.close()
    client = client_for(runs, request_log=tmp_path / "requests.sqlite")
    assert 'id="review-traffic"' in client.get("/review").text
    page = client.get("/review-traffic?reviewer=ada")
    assert "where is my card?" in page.text and "card_arrival" in page.text
    token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
    form = {"content-type": "application/x-www-form-urlencoded"}
    client.post("/review-traffic", content=f"token={token}&verdict=b&corrected=card_arrival", headers=form)
    assert "Every pair" in client.get("/review-traffic?reviewer=ada").text
    exported = client.post("/review-traffic/export")
    assert exported.status_code == 200 and "sft.jsonl" in exported.text
    assert client_for(runs).get("/review-traffic?reviewer=ada").status_code == 404  # no log given


def test_metrics_reader_keeps_partial_lines_and_writes_nan_as_null(tmp_path):
    from specialize.studio.runs import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": NaN}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    points, offset = read_metrics(path)
    assert [p.to_json() for p in points] == [
        {"step": 1, "loss": None, "eval_loss": None},
        {"step": 2, "loss": 0.5, "eval_loss": None},
    ]
    with path.open("a") as handle:
        handle.write('ss": 0.25}\n')
    more, _ = read_metrics(path, offset)  # the line being written is read once it is whole
    assert [p.loss for p in more] == [0.25]


def test_many_labels_give_a_compact_confusion_matrix():
    from specialize.records.eval import ContenderResult, EvalReport, Quality
    from specialize.studio.runs import OTHER, ExampleRow, confusions

    labels = [f"intent_{i:02d}" for i in range(40)]
    report = EvalReport(
        labels=labels,
        contenders=[ContenderResult(name="m", role="fine-tuned", quality=Quality(primary="accuracy"))],
    )
    rows = [
        ExampleRow(0, "a", "intent_01", "intent_01", {"m": "intent_01"}, [], {"m": "intent_01"}),
        ExampleRow(1, "b", "intent_02", "intent_02", {"m": "intent_05"}, ["m"], {"m": "intent_05"}),
        ExampleRow(2, "c", "intent_03", "intent_03", {"m": "no idea"}, ["m"], {"m": OTHER}),
    ]
    (matrix,) = confusions(report, rows)
    assert matrix.labels == ["intent_01", "intent_02", "intent_03"]  # the test rows' labels only
    assert matrix.predicted == ["intent_01", "intent_05", OTHER]  # the labels some reply named
    assert matrix.counts["intent_02"]["intent_05"] == 1
