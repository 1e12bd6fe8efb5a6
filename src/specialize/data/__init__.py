"""Reading, normalising, checking and splitting the user's examples (see DESIGN.md, data flow)."""

from specialize.data.checks import DataReport, check_examples, check_files, normalize_text
from specialize.data.example import Example, Source
from specialize.data.formats import FormatSpec, detect_format, load_examples, normalize
from specialize.data.load import Issue, RawRow, read_rows
from specialize.data.split import Splits, load_split, save_splits, split_examples

__all__ = [
    "DataReport",
    "Example",
    "FormatSpec",
    "Issue",
    "RawRow",
    "Source",
    "Splits",
    "check_examples",
    "check_files",
    "detect_format",
    "load_examples",
    "load_split",
    "normalize",
    "normalize_text",
    "read_rows",
    "save_splits",
    "split_examples",
]
