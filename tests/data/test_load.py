"""Readers: every format, the source line of each row, and every malformed-input path."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specialize.data.example import Source
from specialize.data.load import Issue, cap_issues, read_rows
from specialize.errors import DataError


def errors_of(issues: list[Issue]) -> list[str]:
    return [str(i) for i in issues if i.severity == "error"]


def test_jsonl_rows_and_lines(write_jsonl):
    path = write_jsonl([{"a": 1}, "", "   ", {"a": 2}])
    rows, issues = read_rows(path)
    assert issues == []
    assert [r.data["a"] for r in rows] == [1, 2]
    assert [r.source for r in rows] == [Source(str(path), 1), Source(str(path), 4)]


def test_jsonl_malformed_and_non_object_lines_are_all_reported(write_jsonl):
    path = write_jsonl([{"a": 1}, '{"a": 2', "[1, 2]", {"a": 3}])
    rows, issues = read_rows(path)
    assert [r.data["a"] for r in rows] == [1, 3]
    errors = errors_of(issues)
    assert len(errors) == 2
    assert errors[0].startswith(f"{path}:2: invalid JSON: Expecting ',' delimiter")
    assert errors[1] == f"{path}:3: expected a JSON object, found an array"


def test_jsonl_undecodable_line_is_named_and_others_kept(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": "\xff"}\n{"a": 3}\n')
    rows, issues = read_rows(path)
    assert [r.data["a"] for r in rows] == [1, 3]
    assert errors_of(issues) == [f"{path}:2: not valid UTF-8 (invalid start byte at column 8)"]


def test_json_array_element_lines(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"a": 1},\n\n  {\n    "a": 2\n  }, {"a": 3},\n  7\n]\n', encoding="utf-8")
    rows, issues = read_rows(path)
    assert [(r.data["a"], r.source.line) for r in rows] == [(1, 2), (2, 4), (3, 6)]
    assert errors_of(issues) == [f"{path}:7: expected a JSON object, found a number"]


def test_json_object_with_one_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"version": 2, "data": [{"a": 1}, {"a": 2}]}, indent=2), encoding="utf-8")
    rows, issues = read_rows(path)
    assert issues == []
    assert [(r.data["a"], r.source.line) for r in rows] == [(1, 4), (2, 7)]


def test_json_wrong_shape_is_a_data_error(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"a": [], "b": []}', encoding="utf-8")
    with pytest.raises(DataError, match=r"single list value .*found keys \['a', 'b'\]"):
        read_rows(path)


def test_json_syntax_error_names_its_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n {"a": 1},\n {"a": 2,}\n]\n', encoding="utf-8")
    rows, issues = read_rows(path)
    assert rows == []
    assert errors_of(issues) == [
        f"{path}:3: invalid JSON: Expecting property name enclosed in double quotes (column 10)"
    ]


def test_json_undecodable_bytes_report_first_bad_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b'[\n{"a": 1},\n{"a": "\xc3\x28"}\n]')
    rows, issues = read_rows(path)
    assert rows == []
    assert errors_of(issues)[0].startswith(f"{path}:3: not valid UTF-8")


def test_csv_multiline_field_keeps_physical_line_numbers(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\n"first\nline two",a\nplain,b\n\n"x ""q""",c\n', encoding="utf-8")
    rows, issues = read_rows(path)
    assert issues == []
    assert [(r.data["text"], r.source.line) for r in rows] == [
        ("first\nline two", 2),
        ("plain", 4),
        ('x "q"', 6),
    ]


def test_csv_wrong_column_count(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\nok,a\ntoo,many,fields\nfew\n", encoding="utf-8-sig")
    rows, issues = read_rows(path)
    assert [r.data for r in rows] == [{"text": "ok", "label": "a"}]
    assert errors_of(issues) == [
        f"{path}:3: expected 2 fields (as in the header), found 3",
        f"{path}:4: expected 2 fields (as in the header), found 1",
    ]


def test_csv_undecodable_bytes_stop_at_that_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"text,label\nok,a\nbad \xff,b\nlater,c\n")
    rows, issues = read_rows(path)
    assert [r.data["text"] for r in rows] == ["ok"]
    assert len(issues) == 1 and str(issues[0]).startswith(f"{path}:3: not valid UTF-8")


def test_parquet_rows_are_numbered_from_one(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"input": ["a", "b"], "output": ["x", "y"]}), path)
    rows, issues = read_rows(path)
    assert issues == []
    assert [(r.data["input"], r.source.line) for r in rows] == [("a", 1), ("b", 2)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "no such file"),
        ("data.txt", "hello", r"unsupported file type '.txt'; use .jsonl, .json, .csv, .parquet"),
        ("empty.jsonl", "", "the file is empty"),
        ("blank.jsonl", "\n\n", "holds no rows"),
        ("empty.json", "[]", "holds no rows"),
        ("header.csv", "text,label\n", "holds no rows"),
        ("broken.parquet", "not parquet", "not a readable parquet file"),
    ],
)
def test_file_level_failures_are_data_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read_rows(path)
    assert str(path) in str(info.value)


def test_directory_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="is a directory; give a data file"):
        read_rows(tmp_path)


def test_issue_str_and_cap():
    issue = Issue(Source("a.jsonl", 3), "output", "missing field")
    assert str(issue) == "a.jsonl:3: output: missing field"
    assert str(Issue(None, None, "whole file", "warning")) == "whole file"
    capped = cap_issues([issue] * 5, limit=2, where="a.jsonl")
    assert len(capped) == 3
    assert str(capped[-1]) == "3 more errors in a.jsonl not listed" and capped[-1].count == 3
