"""Helpers of the kill tests: read a zoo's catalog while a driver writes it, SIGKILL a command at a chosen point."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from zooscape.zoo.catalog import catalog_uri


def count(db: Path, sql: str) -> int:
    """The first column of ``sql``'s first row in the catalog ``db`` (read-only); 0 before it or its schema exists."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(catalog_uri(db, mode="ro"), uri=True, timeout=5)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def kill_when(cmd: Sequence[str], env: dict, db: Path, sql: str, at_least: int = 1, timeout: float = 120) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``count(db, sql) >= at_least``; assert that it was killed."""
    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if count(db, sql) >= at_least:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
