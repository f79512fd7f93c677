"""The output folder's lock: one ``crystal-rt watch`` per OUT_DIR.

On POSIX the lock is an ``flock`` on the output *folder itself* (an open descriptor of OUT_DIR), not
only on a file in it: a cleanup that deletes ``OUT_DIR/.crystal-rt-watch.lock`` under a running
watcher cannot make room for a second one (a lock on an unlinked file would be held on a file no
one else can open, and a second watcher would lock the new file and run beside the first). The
lock file is still locked too (so a watcher of an older version, which locks only the file, is
refused, and refuses us) and names the holder (``pid N on HOST``) for the message a second watcher
gets. :meth:`OutputLock.check` tells whether OUT_DIR is still the folder that was locked (``rm -rf
OUT_DIR`` and a new folder of the same name: a second watcher could lock that one), and the
watcher stops when it is not. Where the file system cannot lock a folder (NFS emulates flock with
write locks), the lock file alone is locked and :meth:`OutputLock.check` stops the watcher when
that file was removed or replaced.

On Windows (no locks on folders) the lock file is locked with ``msvcrt.locking``; Windows does not
delete a file that is open, so the file cannot be removed from under the watcher there.

Locks are per open file description, so a second watcher in the same process is refused too; they
are released when the process ends, however it ends (kill -9 leaves the file, not the lock).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import IO

from ..errors import InvalidOption, OutputBusy

__all__ = ["LOCK_NAME", "OutputLock"]

LOCK_NAME = ".crystal-rt-watch.lock"


class OutputLock:
    """An exclusive, non-blocking lock on OUT_DIR (the folder and its lock file), released when the
    process ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fh: IO[bytes] | None = None
        self._dir_fd: int | None = None
        self._dir_id: tuple[int, int] | None = None
        path = folder / LOCK_NAME
        try:
            self._dir_fd = _lock_folder(folder)
        except BlockingIOError:
            raise _busy(folder, _holder(path)) from None
        except OSError as exc:
            raise InvalidOption(f"cannot open the output folder: {exc.strerror or exc}", path=folder) from exc
        try:
            if self._dir_fd is not None:
                st = os.fstat(self._dir_fd)
                self._dir_id = (st.st_dev, st.st_ino)
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
                fh.close()
                raise _busy(folder, _holder(path)) from None
            fh.truncate(0)
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            fh.flush()
            self._fh = fh
        except BaseException:
            self.release()
            raise

    def check(self) -> None:
        """Raise :class:`OutputBusy` when OUT_DIR is no longer the folder this lock holds (it was
        removed or replaced), or, where the folder itself could not be locked, when the lock file
        was removed or replaced: another watcher could lock the new one, so this one must stop."""
        try:
            if self._dir_id is not None:
                st = os.stat(self.folder)
                same = (st.st_dev, st.st_ino) == self._dir_id
            elif self._fh is not None and sys.platform != "win32":
                st, mine = os.stat(self.folder / LOCK_NAME), os.fstat(self._fh.fileno())
                same = (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
            else:
                return
        except OSError:
            same = False
        if not same:
            raise OutputBusy(
                "the output folder (or its lock file) was removed or replaced while this watcher held "
                "it; stopping, so "
                "that two watchers never write to one folder (start the watcher again)",
                path=self.folder,
            )

    def release(self) -> None:
        fh, self._fh = self._fh, None
        dir_fd, self._dir_fd = self._dir_fd, None
        try:
            if fh is not None:
                try:
                    _unlock_file(fh)
                finally:
                    fh.close()
        finally:
            if dir_fd is not None:
                os.close(dir_fd)  # closing the descriptor releases its flock


def _holder(path: Path) -> str:
    """Who holds the lock, as the lock file says (empty when it cannot be read)."""
    with contextlib.suppress(OSError), path.open("rb") as fh:
        return fh.read(200).decode("utf-8", "replace").strip()
    return ""


def _busy(folder: Path, holder: str) -> OutputBusy:
    return OutputBusy(
        f"another crystal-rt watch ({holder or 'another process'}) is writing to this output "
        "folder, and two would process every image twice: let it finish (from cron, run "
        "`--once` less often) or stop it",
        path=folder,
    )


if sys.platform == "win32":
    import msvcrt

    def _lock_folder(folder: Path) -> int | None:
        return None  # folders cannot be locked; the open lock file cannot be deleted either

    def _lock_file(fh: IO[bytes]) -> None:
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock_file(fh: IO[bytes]) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock_folder(folder: Path) -> int | None:
        """An open descriptor of ``folder`` holding an exclusive flock (BlockingIOError if held)."""
        """An open descriptor of ``folder`` holding an exclusive flock (BlockingIOError if held);
        None where the file system cannot lock a folder (NFS emulates flock with write locks, which
        need a descriptor open for writing): then the lock file alone is locked and watched."""
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        except OSError:
            os.close(fd)
            return None
        return fd

    def _lock_file(fh: IO[bytes]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # per open file: also within a process

    def _unlock_file(fh: IO[bytes]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
