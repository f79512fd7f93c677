"""The output folder's lock: one ``crystal-rt watch`` per OUT_DIR (fcntl, or msvcrt on Windows).

The lock is per open file (flock), so a second watcher in the same process is refused too; it
is released when the process ends, however it ends.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import IO

from ..errors import InvalidOption, OutputBusy

__all__ = ["LOCK_NAME", "OutputLock"]

LOCK_NAME = ".crystal-rt-watch.lock"


class OutputLock:
    """An exclusive, non-blocking lock on OUT_DIR's lock file, released when the process ends."""

    def __init__(self, folder: Path) -> None:
        self._fh: IO[bytes] | None = None
        path = folder / LOCK_NAME
        try:
            fh = path.open("a+b")
        except OSError as exc:
            raise InvalidOption(
                f"cannot write to the output folder: {exc.strerror or exc}", path=folder
            ) from exc
        try:
            fh.seek(0)
            _lock_file(fh)
        except OSError:
            try:
                fh.seek(0)
                holder = fh.read(200).decode("utf-8", "replace").strip()
            except OSError:
                holder = ""
            fh.close()
            raise OutputBusy(
                f"another crystal-rt watch ({holder or 'another process'}) is writing to this output "
                "folder, and two would process every image twice: let it finish (from cron, run "
                "`--once` less often) or stop it",
                path=folder,
            ) from None
        fh.truncate(0)
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                _unlock_file(fh)
            finally:
                fh.close()


if sys.platform == "win32":
    import msvcrt

    def _lock_file(fh: IO[bytes]) -> None:
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock_file(fh: IO[bytes]) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock_file(fh: IO[bytes]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # per open file: also within a process

    def _unlock_file(fh: IO[bytes]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
