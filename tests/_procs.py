"""Process helpers for the tests that SIGKILL a verb and check what it leaves running (Linux /proc)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest


def pool_workers(pid: int) -> list[int]:
    """Children of ``pid`` that are spawned pool workers (not the resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie or a dead process does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_parent_and_check_workers(args: list[str]) -> None:
    """Start ``args``, wait for two pool workers, SIGKILL the parent: the workers must be gone soon."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(pool_workers(proc.pid)) < 2:
            if proc.poll() is not None:
                pytest.fail(f"ended (rc {proc.returncode}) before two workers: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("timed out waiting for two worker processes")
            time.sleep(0.005)
        workers = pool_workers(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if alive(pid)], "workers outlived their killed parent"
