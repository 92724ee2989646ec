"""One live writer per run folder: an OS file lock (flock) on RUN_DIR/run.lock, held by the process that
trains the run from before its MLflow record is looked up or created until the run has ended.

The kernel drops the lock when the holder exits for any reason (SIGKILL and out-of-memory kills included),
so a crash never leaves a stale lock behind and `--resume` after a crash just works. While the holder is
alive every other process is refused: a second `train` or `--resume` of the same configuration gets an
error naming the holder's PID and host (written into the lock file), and a suite reports the run as held
elsewhere instead of training it twice or marking it FAILED.

The lock needs a filesystem with working flock: local disks do; on a cluster the shared filesystem must
support it (NFSv4 and Lustre mounted with `flock` do), which the Ray and SLURM backends rely on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from isopo_bench.errors import IsopoBenchError

LOCK_FILE = "run.lock"
RETRY_S = 0.5
"""A refused attempt is retried this long: another process's holder check (try_hold) takes the lock for
microseconds, which must not refuse a real writer."""


class RunLockedError(IsopoBenchError):
    """The run folder is held by another live process; nothing was read or written."""

    def __init__(self, folder: Path, holder: dict):
        self.folder, self.holder = folder, holder
        who = describe_holder(holder)
        super().__init__(
            f"the run in {folder} is being trained right now by {who}; two writers would duplicate its steps and "
            f"overwrite each other's checkpoints. Fix: wait for that process to end (or stop it: `kill "
            f"{holder.get('pid', 'PID')}` on {holder.get('host', 'its host')}), then run the same command with --resume; "
            "or set --tracking.output-dir to train a separate copy")


def describe_holder(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has not written its PID yet)"
    return f"PID {holder['pid']} on host {holder.get('host', '?')} (since {holder.get('since', '?')})"


def _open_and_lock(path: Path, blocking: bool) -> int | None:
    """An fd holding an exclusive flock on `path` (created if missing), or None when another process holds
    it (non-blocking). Re-checks that the locked file is still the one at `path`: a holder that cleans up
    unlinks the file while holding it, and a lock on an unlinked inode would guard nothing."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # a holder that cleaned up removed the folder meanwhile
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def read_holder(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}


class RunLock:
    """An exclusive hold on one run folder. `release()` (or closing the process) lets it go."""

    def __init__(self, folder: Path, fd: int, created: list[Path]):
        self.folder, self._fd, self._created = folder, fd, created

    @classmethod
    def try_hold(cls, folder: Path, create: bool = True, retry_s: float = 0.0) -> "RunLock | None":
        """The lock, or None when another live process holds it (retried for `retry_s` seconds)."""
        folder = Path(folder)
        created = []
        if not folder.exists():
            if not create:
                return None
            for parent in [folder, *folder.parents]:  # the folders this call creates, to remove on cleanup
                if parent.exists():
                    break
                created.append(parent)
            folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + retry_s
        while True:
            fd = _open_and_lock(folder / LOCK_FILE, blocking=False)
            if fd is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if fd is None:
            return None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        return cls(folder, fd, created)

    @classmethod
    def hold(cls, folder: Path) -> "RunLock":
        """The lock, or RunLockedError naming the live holder."""
        lock = cls.try_hold(folder, retry_s=RETRY_S)
        if lock is None:
            raise RunLockedError(Path(folder), read_holder(folder))
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the lock go. A folder that holds nothing but the lock (a run that failed before it was
        created) is removed with the folders this lock created, so a refused or failed start leaves no trace."""
        if self._fd is None:
            return
        try:
            leftover = {p.name for p in self.folder.iterdir()} == {LOCK_FILE}
            if leftover:
                (self.folder / LOCK_FILE).unlink()  # while still held: see _open_and_lock
                for folder in [self.folder, *self._created]:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __del__(self):  # a dropped lock object must not keep the run blocked for the life of the process
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


def is_main_rank() -> bool:
    """Rank 0 of a torchrun launch (or a plain process) owns the run folder and its lock."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def holding_run(cfg) -> Iterator[RunLock | None]:
    """Hold the run folder of `cfg` for the duration (rank 0 only: other ranks never write the folder)."""
    from isopo_bench.run_store import run_dir_for

    if not is_main_rank():
        yield None
        return
    lock = RunLock.hold(run_dir_for(cfg))
    try:
        yield lock
    finally:
        lock.release()


def wait_for_lock(path: Path, timeout_s: float, what: str) -> int:
    """A blocking exclusive flock on `path` (created if needed) within `timeout_s`; returns its fd."""
    deadline = time.monotonic() + timeout_s
    while True:
        fd = _open_and_lock(path, blocking=False)
        if fd is not None:
            return fd
        if time.monotonic() > deadline:
            holder = {}
            with contextlib.suppress(OSError, ValueError):
                holder = json.loads(path.read_text() or "{}")
            raise IsopoBenchError(f"{what}: {path} stayed locked by {describe_holder(holder)} for {timeout_s:.0f} s. "
                                  "Fix: check that process; the lock goes away when it exits")
        time.sleep(0.05)
