"""profile.json as a typed record: files written before the record existed still load, and a
profile read and written back is the same file.

The fixtures were written by the dict-based writer that preceded `specialize.records.profile`
(`monitor.profile.write_profile` at commit 003a3be, hashed embedder, a six-row sample): one
classification run counted in tokens, one JSON task counted in words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from specialize.errors import RunError
from specialize.monitor.embed import decode_array, embedder_from_state
from specialize.records.profile import PROFILE_VERSION, Profile, read_profile, write_profile_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CLASSIFICATION = FIXTURES / "profile_v1_classification.json"
JSON_TASK = FIXTURES / "profile_v1_json.json"


def test_a_profile_written_by_the_previous_writer_loads_typed():
    profile = read_profile(CLASSIFICATION)
    assert profile.version == PROFILE_VERSION and profile.task == "classification"
    assert profile.length_unit == "tokens" and profile.tokenizer == "unnamed"
    assert profile.labels is not None and profile.labels.counts["pin_blocked"] == 0
    assert sum(profile.labels.counts.values()) == profile.labels.n == profile.n_train == 24
    assert profile.json_fields is None and profile.sample.json_fields is None
    features = profile.sample.features
    assert len(features.input_tokens) == len(features.input_words) == profile.sample.n == 6
    assert features.lengths("input", "tokens") == features.input_tokens
    assert profile.lengths.input.histogram is not None and profile.lengths.input.p50 is not None
    embeddings = decode_array(profile.sample.embeddings)
    assert embeddings.shape == (6, profile.embedder.dim) and profile.embedder.idf is not None
    # The stored embedder rebuilds: the sample's own texts are not in the file, but any text embeds.
    assert embedder_from_state(profile.embedder).embed(["my card"]).shape == (1, 512)
    assert np.isfinite(embeddings).all()


def test_a_json_task_profile_loads_with_its_fields():
    profile = read_profile(JSON_TASK)
    assert profile.task == "json" and profile.labels is None and profile.tokenizer is None
    assert profile.json_fields is not None and profile.json_fields.fields == ["amount", "name", "note"]
    assert profile.sample.json_fields is not None and len(profile.sample.json_fields) == profile.sample.n
    assert profile.sample.features.input_tokens is None
    with pytest.raises(RunError, match="no input lengths in tokens"):
        profile.sample.features.lengths("input", "tokens")


@pytest.mark.parametrize("fixture", [CLASSIFICATION, JSON_TASK], ids=["classification", "json"])
def test_reading_and_writing_back_gives_the_same_file(tmp_path, fixture):
    original = fixture.read_text(encoding="utf-8")
    path = write_profile_file(tmp_path / "profile.json", read_profile(fixture))
    assert path.read_text(encoding="utf-8") == original


def test_unreadable_profiles_say_how_to_rebuild(tmp_path):
    data = json.loads(CLASSIFICATION.read_text(encoding="utf-8"))
    bad = tmp_path / "profile.json"
    bad.write_text("{not json")
    with pytest.raises(RunError, match="not a valid profile.*specialize profile"):
        read_profile(bad)
    bad.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(RunError, match="profile version 99"):
        read_profile(bad)
    del data["sample"]
    bad.write_text(json.dumps(data))
    with pytest.raises(RunError, match="sample"):
        read_profile(bad)
    with pytest.raises(RunError, match="not a valid profile"):
        read_profile(tmp_path / "missing.json")


def test_fields_set_after_building_are_written():
    profile = read_profile(JSON_TASK)
    rebuilt = Profile.model_validate(json.loads(profile.json_text()))
    rebuilt.run = "runs/elsewhere"
    assert json.loads(rebuilt.json_text())["run"] == "runs/elsewhere"
    assert "input_tokens" not in json.loads(rebuilt.json_text())["sample"]["features"]
