"""Child processes a test starts: wait for the line that says one is ready, stop one."""

from __future__ import annotations

import signal
import subprocess


def wait_for_line(process: subprocess.Popen, needle: str) -> list[str]:
    """Read the process's output until a line holds ``needle``; the lines read. Fails
    with everything it printed if it exits first."""
    seen: list[str] = []
    while not any(needle in line for line in seen):
        line = process.stdout.readline()
        assert line, "the process exited:\n" + "".join(seen)
        seen.append(line)
    return seen


def stop_gracefully(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if it already ended."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
