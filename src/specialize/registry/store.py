"""The adapter registry: named, versioned LoRA adapters as SQLite metadata plus files.

Layout of a registry directory (default `$SPECIALIZE_HOME/registry`, else
`~/.local/share/specialize/registry`; `$SPECIALIZE_REGISTRY` or an argument overrides it):

    registry.sqlite                      one row per (name, version), see `_SCHEMA`
    <name>/v<N>/adapter_config.json      exactly the PEFT files, so vLLM / LoRAX can serve
    <name>/v<N>/adapter_model.safetensors  the same directories at cluster scale

A version is immutable: re-adding a name writes a new `v<N+1>` directory, never over the old
files, so a server holding v1 in memory can never mix v1 and v2 weights. Files are copied into a
temp directory and renamed into place, and the row is inserted in the same transaction that
chose N, so a killed `add` leaves either nothing or a complete version. Only safetensors are
accepted: pickled weights (`adapter_model.bin`) can execute code when loaded.

Slightly over 500 lines: the store is one SQLite schema and its transactions; the lineage tables
are in registry/lineage.py and the source inspection in registry/source.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from specialize.atomic import atomic_write_text
from specialize.registry import lineage as tables
from specialize.registry.errors import AdapterNotFoundError, IncompatibleAdapterError, RegistryError
from specialize.registry.lineage import LINEAGE_COLUMNS, DecisionEntry, Lineage, Switch, TrainingData
from specialize.registry.source import CONFIG_FILE, WEIGHTS_FILE, AdapterSource, inspect_source

HOME_ENV = "SPECIALIZE_HOME"
REGISTRY_ENV = "SPECIALIZE_REGISTRY"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS adapters (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,               -- relative to the registry directory: <name>/v<N>
    base_model_id TEXT NOT NULL,
    base_ref TEXT NOT NULL,           -- JSON of specialize.models.registry.ModelRef
    base_fingerprint TEXT NOT NULL,   -- weights_fingerprint() of the base the adapter was trained on
    rank INTEGER NOT NULL,
    alpha REAL NOT NULL,
    target_modules TEXT NOT NULL,     -- JSON list
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,             -- of adapter_model.safetensors
    created REAL NOT NULL,            -- unix time
    eval_headline TEXT,               -- the run's eval/report.json "headline", when there is one
    source TEXT NOT NULL,             -- where it was added from
    output_contract TEXT,             -- JSON of the run's OutputContract (run.json), when it recorded one
    contract_off_reason TEXT,         -- why the contract is not applied by default (its eval found it harmful)
    parent_version INTEGER,           -- lineage (registry/lineage.py): the version this was retrained from,
    data_sha256 TEXT,                 -- the hash and row count of its training rows (splits/train.jsonl),
    data_rows INTEGER,
    rows_added INTEGER,               -- rows not in the parent's training rows,
    run_dir TEXT,                     -- its run directory
    eval_report TEXT,                 -- and that run's eval/report.json
    PRIMARY KEY (name, version)
)
"""
# Columns added after the first release: an older registry.sqlite gains them on first use.
_ADDED_COLUMNS = {"output_contract": "TEXT", "contract_off_reason": "TEXT", **LINEAGE_COLUMNS}
_COLUMNS = (
    "name, version, path, base_model_id, base_ref, base_fingerprint, rank, alpha, target_modules, "
    "size_bytes, sha256, created, eval_headline, source, output_contract, contract_off_reason, "
    "parent_version, data_sha256, data_rows, rows_added, run_dir, eval_report"
)


def data_home() -> Path:
    root = os.environ.get(HOME_ENV)
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "specialize"


def default_registry_dir() -> Path:
    explicit = os.environ.get(REGISTRY_ENV)
    return Path(explicit).expanduser() if explicit else data_home() / "registry"


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise RegistryError(
            f"invalid adapter name '{name}': use 1-64 characters from a-z 0-9 . _ -, "
            "starting with a letter or digit (e.g. 'banking77' or 'support-v2')"
        )
    return name


@dataclass(frozen=True)
class AdapterRecord:
    name: str
    version: int
    path: Path
    base_model_id: str
    base_ref: dict[str, str]
    base_fingerprint: str
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    sha256: str
    created: float
    eval_headline: str | None
    source: str
    # The run's output contract (`OutputContract.to_dict()`, e.g. {"kind": "labels", "labels": [...]}),
    # which a server enforces by default; None when the run has none (free text).
    output_contract: dict[str, Any] | None = None
    # Set when the run's evaluation found that decoding under that contract makes answers
    # significantly worse: the server then decodes freely by default, and says why.
    contract_off_reason: str | None = None
    # Lineage: None for versions added before it was recorded, or from a bare PEFT directory.
    parent_version: int | None = None
    data_sha256: str | None = None
    data_rows: int | None = None
    rows_added: int | None = None
    run_dir: str | None = None
    eval_report: str | None = None

    @property
    def default_contract(self) -> dict[str, Any] | None:
        """The contract a request that sets no response_format is decoded under."""
        return None if self.contract_off_reason else self.output_contract

    @property
    def key(self) -> str:
        """Identity of these exact weights: a removed and re-added name never reuses a key."""
        return f"{self.name}@v{self.version}:{self.sha256[:12]}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


class AdapterRegistry:
    """Add, list, find and remove adapters. Safe to use from several processes at once."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_registry_dir()
        self.db_path = self.root / "registry.sqlite"
        self._migrated = False

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(_SCHEMA)
            if not self._migrated:
                _add_missing_columns(conn)
                tables.create_tables(conn)
                self._migrated = True
            if not write:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")  # one writer at a time chooses the next version
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()

    def add(
        self,
        name: str,
        source: str | Path,
        *,
        base: str | None = None,
        lineage: Lineage | None = None,
        make_current: bool = True,
    ) -> AdapterRecord:
        """Copy the adapter at `source` into the registry as the next version of `name`.

        It becomes the name's current version (what `NAME` serves) unless `make_current=False`,
        as for a retrained challenger that has yet to prove itself; a name's first version is
        always current."""
        check_name(name)
        found = inspect_source(source, base=base)
        origin = lineage or Lineage()
        data = TrainingData.of_run(found.run_dir)
        run = found.run_dir.resolve() if found.run_dir is not None else None
        report = run / "eval" / "report.json" if run is not None else None
        staging = Path(tempfile.mkdtemp(prefix=f".incoming-{name}-", dir=self._ensure_root()))
        final: Path | None = None
        try:
            sha256 = _copy_file(found.adapter_dir / WEIGHTS_FILE, staging / WEIGHTS_FILE)
            _copy_file(found.adapter_dir / CONFIG_FILE, staging / CONFIG_FILE)
            size = sum(p.stat().st_size for p in staging.iterdir())
            with self._connect(write=True) as conn:
                row = conn.execute("SELECT MAX(version) FROM adapters WHERE name = ?", (name,)).fetchone()
                version = max(row[0] or 0, self._max_dir_version(name)) + 1
                final = self.root / name / f"v{version}"
                final.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(final)
                record = AdapterRecord(
                    name=name,
                    version=version,
                    path=final,
                    base_model_id=found.base_ref.get("model_id", "?"),
                    base_ref=found.base_ref,
                    base_fingerprint=found.base_fingerprint,
                    rank=int(found.config["r"]),
                    alpha=float(found.config.get("lora_alpha", found.config["r"])),
                    target_modules=_target_modules(found),
                    size_bytes=size,
                    sha256=sha256,
                    created=time.time(),
                    eval_headline=found.eval_headline,
                    source=str(Path(source).expanduser().resolve()),
                    output_contract=found.output_contract,
                    contract_off_reason=found.contract_off_reason,
                    parent_version=origin.parent_version,
                    data_sha256=data.sha256 if data else None,
                    data_rows=data.rows if data else None,
                    rows_added=origin.rows_added,
                    run_dir=str(run) if run is not None else None,
                    eval_report=str(report) if report is not None and report.is_file() else None,
                )
                conn.execute(
                    f"INSERT INTO adapters ({_COLUMNS}) VALUES ({','.join('?' * 22)})",
                    (
                        name,
                        version,
                        f"{name}/v{version}",
                        record.base_model_id,
                        json.dumps(record.base_ref),
                        record.base_fingerprint,
                        record.rank,
                        record.alpha,
                        json.dumps(record.target_modules),
                        size,
                        sha256,
                        record.created,
                        record.eval_headline,
                        record.source,
                        json.dumps(record.output_contract) if record.output_contract is not None else None,
                        record.contract_off_reason,
                        record.parent_version,
                        record.data_sha256,
                        record.data_rows,
                        record.rows_added,
                        record.run_dir,
                        record.eval_report,
                    ),
                )
                previous = self._current_version(conn, name, exclude=version)
                if make_current or previous is None:
                    action = "add" if previous is None else "promote"
                    tables.switch(conn, name, version, previous, action, "added")
                elif tables.pointer(conn, name) is None:
                    # An older registry serves the latest version: pin the one in service first,
                    # or the challenger would take traffic by merely being added.
                    tables.switch(conn, name, previous, None, "add", "pinned before adding a challenger")
            self._touch_stamp()
            return record
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if final is not None and not self._has_row(name, final):
                shutil.rmtree(final, ignore_errors=True)
            raise

    def list(self, *, all_versions: bool = False) -> list[AdapterRecord]:
        """The latest version of every adapter (or every version), sorted by name."""
        query = "SELECT * FROM adapters a"
        if not all_versions:
            query += " WHERE version = (SELECT MAX(version) FROM adapters b WHERE b.name = a.name)"
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY name, version").fetchall()
        return [self._record(row) for row in rows]

    def get(self, name: str, version: int | None = None) -> AdapterRecord:
        with self._connect() as conn:
            if version is None:
                row = conn.execute(
                    "SELECT * FROM adapters WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT * FROM adapters WHERE name = ? AND version = ?", (name, version)
                ).fetchone()
        if row is None:
            what = f"'{name}'" + (f" version {version}" if version is not None else "")
            raise AdapterNotFoundError(
                f"no adapter {what} in the registry {self.root}; add it with `specialize adapters add`"
            )
        return self._record(row)

    def remove(self, name: str, version: int | None = None) -> list[AdapterRecord]:
        """Delete one version, or all versions of a name; returns what was removed."""
        with self._connect(write=True) as conn:
            if version is None:
                rows = conn.execute("SELECT * FROM adapters WHERE name = ?", (name,)).fetchall()
                conn.execute("DELETE FROM adapters WHERE name = ?", (name,))
            else:
                rows = conn.execute(
                    "SELECT * FROM adapters WHERE name = ? AND version = ?", (name, version)
                ).fetchall()
                conn.execute("DELETE FROM adapters WHERE name = ? AND version = ?", (name, version))
        if not rows:
            self.get(name, version)  # raises the not-found message
        removed = [self._record(row) for row in rows]
        self._touch_stamp()  # the current version may have been removed: servers re-read it
        for record in removed:
            _remove_tree(record.path)
        if version is None or not any((self.root / name).glob("v*")):
            with contextlib.suppress(OSError):
                (self.root / name).rmdir()
        return removed

    def _ensure_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def _max_dir_version(self, name: str) -> int:
        """Versions left on disk by a crash between rename and commit are never reused."""
        versions = [int(p.name[1:]) for p in (self.root / name).glob("v*") if p.name[1:].isdigit()]
        return max(versions, default=0)

    def _has_row(self, name: str, path: Path) -> bool:
        try:
            with self._connect() as conn:
                row = conn.execute(
                    "SELECT 1 FROM adapters WHERE name = ? AND path = ?", (name, f"{name}/{path.name}")
                ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    def _record(self, row: sqlite3.Row) -> AdapterRecord:
        return AdapterRecord(
            name=row["name"],
            version=row["version"],
            path=self.root / row["path"],
            base_model_id=row["base_model_id"],
            base_ref=json.loads(row["base_ref"]),
            base_fingerprint=row["base_fingerprint"],
            rank=row["rank"],
            alpha=row["alpha"],
            target_modules=json.loads(row["target_modules"]),
            size_bytes=row["size_bytes"],
            sha256=row["sha256"],
            created=row["created"],
            eval_headline=row["eval_headline"],
            source=row["source"],
            output_contract=json.loads(row["output_contract"]) if row["output_contract"] else None,
            contract_off_reason=row["contract_off_reason"],
            **{column: row[column] for column in LINEAGE_COLUMNS},
        )

    # The current version (what `NAME` serves) and its history ----------------------------------

    @property
    def stamp_path(self) -> Path:
        """Replaced after every switch of a current version: stat it to notice one cheaply."""
        return self.root / tables.STAMP_FILE

    def current(self, name: str) -> AdapterRecord:
        """The version `name` serves: the pointer's, else (an older registry) the latest."""
        with self._connect() as conn:
            version = self._current_version(conn, name)
        if version is None:
            return self.get(name)  # raises the not-found message
        return self.get(name, version)

    def current_all(self) -> list[AdapterRecord]:
        """The current version of every name, sorted by name."""
        with self._connect() as conn:
            names = [r[0] for r in conn.execute("SELECT DISTINCT name FROM adapters ORDER BY name")]
        return [self.current(name) for name in names]

    def current_since(self, name: str) -> float | None:
        """When the current version became current (None: never switched, an older registry)."""
        with self._connect() as conn:
            return tables.since(conn, name)

    def promote(self, name: str, version: int, *, reason: str | None = None) -> Switch:
        """Make `version` the current version of `name`, in one transaction with its history row."""
        with self._connect(write=True) as conn:
            self._require(conn, name, version)
            previous = self._current_version(conn, name)
            if previous == version:
                raise RegistryError(f"'{name}' v{version} is already the current version")
            done = tables.switch(conn, name, version, previous, "promote", reason)
        self._touch_stamp()
        return done

    def rollback(self, name: str, *, reason: str | None = None) -> Switch:
        """Go back to the version that was current before the current one was promoted."""
        with self._connect(write=True) as conn:
            current = self._current_version(conn, name)
            if current is None:
                raise AdapterNotFoundError(f"no adapter '{name}' in the registry {self.root}")
            target = tables.rollback_target(conn, name, current)
            if target is None:
                raise RegistryError(
                    f"'{name}' v{current} was not promoted over another version: nothing to roll back to"
                )
            self._require(conn, name, target, why=f"cannot roll back to it from v{current}")
            done = tables.switch(conn, name, target, current, "rollback", reason)
        self._touch_stamp()
        return done

    def history(self, name: str) -> list[Switch]:
        """Every switch of `name`'s current version, oldest first."""
        with self._connect() as conn:
            return tables.history(conn, name)

    def record_decision(self, entry: DecisionEntry) -> DecisionEntry:
        with self._connect(write=True) as conn:
            return tables.add_decision(conn, entry)

    def decisions(self, name: str) -> list[DecisionEntry]:
        with self._connect() as conn:
            return tables.decisions(conn, name)

    def _current_version(self, conn: sqlite3.Connection, name: str, exclude: int | None = None) -> int | None:
        """The pointer's version if it names an existing version, else the latest (not `exclude`)."""
        version = tables.pointer(conn, name)
        if version is not None and version != exclude:
            row = conn.execute(
                "SELECT 1 FROM adapters WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            if row is not None:
                return version
        row = conn.execute(
            "SELECT MAX(version) FROM adapters WHERE name = ? AND version != ?", (name, exclude or -1)
        ).fetchone()
        return row[0]

    def _require(self, conn: sqlite3.Connection, name: str, version: int, why: str = "") -> None:
        row = conn.execute(
            "SELECT 1 FROM adapters WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
        if row is None:
            raise AdapterNotFoundError(
                f"no adapter '{name}' version {version} in the registry {self.root}"
                + (f"; {why}" if why else "")
            )

    def _touch_stamp(self) -> None:
        atomic_write_text(self.stamp_path, f"{time.time_ns()}\n")


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """ALTER an adapters table made by an older version; another process may race us to it."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(adapters)")}
    for column, kind in _ADDED_COLUMNS.items():
        if column in have:
            continue
        try:
            conn.execute(f"ALTER TABLE adapters ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise


def check_compatible(record: AdapterRecord, base_fingerprint: str, base_model_id: str) -> None:
    """Refuse to run an adapter on base weights other than the ones it was trained on."""
    if record.base_fingerprint != base_fingerprint:
        raise IncompatibleAdapterError(
            f"adapter '{record.name}' (v{record.version}) was trained on '{record.base_model_id}' "
            f"(weights {record.base_fingerprint}), but this server runs '{base_model_id}' "
            f"(weights {base_fingerprint}); serve it with --model {record.base_ref.get('ref', record.base_model_id)}"
        )


def _target_modules(found: AdapterSource) -> list[str]:
    """The module kinds the adapter touches, read from its tensors (the config may say 'all-linear')."""
    kinds = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n in found.tensor_names if ".lora_A." in n}
    return sorted(kinds)


def _copy_file(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def _remove_tree(path: Path) -> None:
    """Rename first, so a reader never sees a half-deleted version directory."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        path.rename(trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)
