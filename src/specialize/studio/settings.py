"""What one studio serves: its folders, its registry and request log, and who may connect."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from specialize.errors import ConfigError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class StudioSettings:
    """`runs` is the runs folder; `data` the folder whose data files New run offers (default: the
    runs folder's parent). `token` is required from every client when set: `for_host` sets one
    whenever the studio listens on anything but loopback."""

    runs: Path
    data: Path
    registry: Path | None = None
    request_log: Path | None = None
    token: str | None = None
    python: str | None = None  # the interpreter that runs `python -m specialize train` (default: ours)

    @classmethod
    def for_host(
        cls,
        runs: str | Path,
        host: str,
        *,
        data: str | Path | None = None,
        registry: str | Path | None = None,
        request_log: str | Path | None = None,
        token: str | None = None,
    ) -> StudioSettings:
        runs_dir = Path(runs).expanduser().resolve()
        if runs_dir.exists() and not runs_dir.is_dir():
            raise ConfigError(f"--runs {runs}: not a directory")
        runs_dir.mkdir(parents=True, exist_ok=True)
        data_dir = Path(data).expanduser().resolve() if data else runs_dir.parent
        if not data_dir.is_dir():
            raise ConfigError(f"--data-dir {data}: not a directory")
        if token is None and not is_loopback(host):
            token = secrets.token_urlsafe(18)
        return cls(
            runs=runs_dir,
            data=data_dir,
            registry=Path(registry).expanduser() if registry else None,
            request_log=Path(request_log).expanduser() if request_log else None,
            token=token,
        )
