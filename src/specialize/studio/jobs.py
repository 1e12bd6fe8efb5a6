"""Training runs the studio started: `python -m specialize train` in a subprocess each.

A subprocess, not a thread, so that a crash or an out-of-memory in training cannot take the
studio down, cancelling is a signal, and the command is exactly what a user would type. Output
goes to a log file in the runs folder's `.studio/` (not inside the run directory, whose layout
belongs to `RunDir`). Cancel sends SIGINT first (the trainer stops between steps and the last
checkpoint stays resumable), then SIGTERM if it does not stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from specialize.errors import RunError


@dataclass
class Job:
    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen
    started: float

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Jobs:
    def __init__(self, runs: Path, python: str | None = None):
        self.runs = runs
        self.python = python or sys.executable
        self.folder = runs / ".studio"
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def config_file(self, name: str) -> Path:
        return self.folder / "configs" / f"{name}.yaml"

    def start(self, name: str, config: Path, *, resume: bool = False) -> Job:
        with self._lock:
            current = self._jobs.get(name)
            if current is not None and current.running:
                raise RunError(f"run {name!r} is already training (pid {current.process.pid})")
            out = self.runs / name
            command = [self.python, "-m", "specialize", "train", "--config", str(config), "--out", str(out)]
            if resume:
                command.append("--resume")
            log = self.folder / "logs" / f"{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            with log.open("a", encoding="utf-8") as handle:
                handle.write(f"$ {' '.join(command)}\n")
                handle.flush()
                process = subprocess.Popen(
                    command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                )
            job = Job(name, command, log, process, time.time())
            self._jobs[name] = job
            return job

    def cancel(self, name: str, timeout: float = 20.0) -> Job:
        job = self._jobs.get(name)
        if job is None or not job.running:
            raise RunError(f"run {name!r} is not training in this studio")
        job.process.send_signal(signal.SIGINT)
        try:
            job.process.wait(timeout)
        except subprocess.TimeoutExpired:
            job.process.terminate()
            job.process.wait(10)
        return job

    def stop_all(self) -> None:
        for job in self._jobs.values():
            if job.running:
                job.process.terminate()
