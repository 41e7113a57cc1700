"""Small helpers shared by the harness modules: progress output and subprocess calls."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


class HarnessError(RuntimeError):
    """Something the harness needs is missing or failed; the message says what."""


def say(message: str) -> None:
    """Print one progress line; flushed so long steps show up at once (also under pytest -s)."""
    print(f"[testhosts] {message}", file=sys.stderr, flush=True)


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = True,
    input_text: str | None = None,
    timeout: float | None = 120,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (argv list, never a shell); raise HarnessError with its output on failure."""
    args = [str(a) for a in argv]
    result = subprocess.run(
        args,
        input=input_text,
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or "") + (result.stdout or "") if capture else ""
        raise HarnessError(f"command failed ({result.returncode}): {' '.join(args)}\n{detail}")
    return result


def run_with_progress(
    argv: Sequence[str | Path], label: str, timeout: float = 1800, every: float = 15
) -> None:
    """Run a long command, printing its latest output line every `every` seconds."""
    args = [str(a) for a in argv]
    lines: list[str] = []
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        start = time.monotonic()
        while True:
            try:
                proc.wait(timeout=every)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - start
                if elapsed > timeout:
                    proc.kill()
                    raise HarnessError(f"{label}: timed out after {timeout:.0f} s") from None
                if lines:
                    say(f"{label}: {elapsed:.0f} s, {lines[-1].strip()}")
        reader.join(timeout=5)
    if proc.returncode != 0:
        tail = "".join(lines[-30:])
        raise HarnessError(f"{label} failed ({proc.returncode}): {' '.join(args)}\n{tail}")


def process_alive(pid: int) -> bool:
    """True while `pid` runs; reaps it first if it is our own exited child (not a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def quiet(argv: Sequence[str | Path]) -> bool:
    """Run a cleanup command whose failure is expected when the thing is already gone."""
    return run(argv, check=False).returncode == 0


def wait_for(what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
    """Poll `probe` until it returns True; return the seconds waited or raise after `timeout`."""
    start = time.monotonic()
    while True:
        if probe():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing); released when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
