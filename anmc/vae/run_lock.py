"""One writer per run directory: `RUN/.anmc-lock` names the process that trains into it.

    with run_lock(run_dir):        # RunLocked (exit 2) when another live process holds it
        ...train, write checkpoints...

The lock is an exclusive `flock` on that file, which the kernel drops when its process ends, however
it ends (SIGKILL, a crash, a power cut's reboot): a lock file left by a killed run is stale by
construction and simply taken over. The file holds `{"pid", "host", "since"}` of the holder, for the
message a second writer gets. Where the file system has no `flock` (some network mounts), the
lock is the file's existence instead (created atomically with its content), and a stale one is
recognised by its pid and host: same host and no live process with that pid (a reused pid is told
apart by the process's start time from /proc); a lock from another host cannot be checked and is
refused with the way out (delete the file once that run is surely over).

While the lock is held nothing else writes the run, so `acquire` removes the temporary files of
writers that were killed mid-write (`.checkpoint.pt.tmp-PID`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from anmc.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: the pid + host lock below
    fcntl = None

LOCK = ".anmc-lock"


class RunLocked(UserError):
    """Another live process is writing the run directory (or the directory cannot be written)."""


@dataclass
class Lock:
    path: Path
    fd: int | None  # the flock'ed descriptor, None for the pid + host lock


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()), "since": time.time()}


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except OSError:
        return False
    return start is None or _start_time(pid) in (None, start)


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _refuse(run_dir: Path, path: Path, holder: dict) -> RunLocked:
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        return RunLocked(f"{run_dir} is already being trained by this process; train into another -o directory.")
    who = f"process {holder['pid']} on {holder['host']}" if {"pid", "host"} <= holder.keys() else "another process"
    since = f" (since {time.strftime('%Y-%m-%d %H:%M', time.localtime(holder['since']))})" if isinstance(holder.get("since"), (int, float)) else ""
    return RunLocked(
        f"{run_dir} is being trained by {who}{since}; nothing was changed: wait for it to finish or train into "
        f"another -o directory (if that process is surely gone, delete {path})."
    )


def _flock(run_dir: Path, path: Path) -> Lock | None:
    """The flock'ed lock, or None where the file system has no flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(run_dir, path, _holder(path)) from None
        except OSError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder unlinked while we waited for it
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_me()).encode())
            return Lock(path, fd)
        os.close(fd)


def _exclusive_file(run_dir: Path, path: Path) -> Lock:
    """The pid + host lock: create the file atomically with its content; take over a stale one."""
    for _ in range(3):
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(_me()))
        try:
            os.link(tmp, path)
            return Lock(path, None)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        holder = _holder(path)
        pid, host = holder.get("pid"), holder.get("host")
        stale = not isinstance(pid, int) or (host == socket.gethostname() and not _alive(pid, holder.get("start")))
        if not stale or (pid == os.getpid() and host == socket.gethostname()):
            raise _refuse(run_dir, path, holder)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a killed writer's lock
    raise _refuse(run_dir, path, _holder(path))


def acquire(run_dir: str | Path) -> Lock:
    """Take the lock of `run_dir` (created if needed); RunLocked if a live process holds it."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = _flock(run_dir, path) if fcntl is not None else None
        lock = lock or _exclusive_file(run_dir, path)
    except OSError as err:
        raise RunLocked(
            f"cannot write into {run_dir} ({err.strerror or err}); nothing was changed there: "
            "choose another -o directory or fix its permissions."
        ) from None
    clean_temporary_files(run_dir)
    return lock


def release(lock: Lock) -> None:
    """Remove the lock file and let go of the lock."""
    with contextlib.suppress(OSError):
        lock.path.unlink()
    if lock.fd is not None:
        os.close(lock.fd)


@contextlib.contextmanager
def run_lock(run_dir: str | Path):
    """Hold the lock of `run_dir` for the `with` block (see the module docstring)."""
    lock = acquire(run_dir)
    try:
        yield lock
    finally:
        release(lock)


def clean_temporary_files(run_dir: str | Path) -> list[Path]:
    """Remove what killed writers left in `run_dir` (`.checkpoint.pt.tmp-PID`, `.anmc-lock.tmp-PID`);
    call it only while holding the lock. Returns the removed paths."""
    removed = []
    for tmp in Path(run_dir).glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed
