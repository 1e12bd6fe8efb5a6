"""What each rank runs in the 2-process test: the `specialize` CLI, with every write that this
rank makes under the run directory recorded (through Python's audit hooks) in its own log.

Not a test module itself; `test_distributed.py` launches it under `accelerate launch`.
"""

from __future__ import annotations

import os
import sys

RUN_DIR = os.path.realpath(os.environ["SPECIALIZE_TEST_RUN_DIR"])
LOG = open(os.path.join(os.environ["SPECIALIZE_TEST_WRITES"], f"rank{os.environ.get('RANK', '0')}.log"), "w")  # noqa: SIM115
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _under_run_dir(path: object) -> bool:
    if isinstance(path, int):
        return False
    return os.path.realpath(os.fsdecode(path)).startswith(RUN_DIR)


def record_writes(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
        paths = [path] if writing else []
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
        paths = [args[0]]
    elif event in ("os.rename", "os.replace"):
        paths = [args[0], args[1]]
    else:
        return
    for path in paths:
        if _under_run_dir(path):
            LOG.write(f"{event} {os.fsdecode(path)}\n")
            LOG.flush()


if __name__ == "__main__":
    sys.addaudithook(record_writes)
    from specialize.cli import app

    try:
        app(sys.argv[1:], standalone_mode=False)
    finally:
        LOG.write("finished\n")
        LOG.close()
