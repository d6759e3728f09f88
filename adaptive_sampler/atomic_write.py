"""Write files so that readers see the old file or the new one, never a part (exports, schedules, caches), and write
several files all-or-nothing (the CLI's --save/--json/--out)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["AtomicWriteError", "atomic_write_bytes", "atomic_write_files"]


class AtomicWriteError(OSError):
    """Writing `path` failed (`__cause__` says why); no file of the set it belonged to was written or left behind."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = path


def _write_all(fd: int, data: bytes) -> None:
    """Write `data` to the open descriptor `fd` and close it (the one place bytes hit the disk; tests patch it)."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def atomic_write_files(files: Mapping[Path, bytes]) -> None:
    """Write every `path: data` of `files`, all or nothing: each goes to a temporary file in its own folder, and
    only when all of them are complete are they renamed into place.

    If any write fails, every temporary file is removed, no path of `files` is touched, and `AtomicWriteError`
    names the path that failed (if a rename fails, the files already renamed are removed again). The files get the
    mode of an ordinary new file (0666 minus the umask), not mkstemp's 0600. Folders are not created.
    """
    umask = os.umask(0)
    os.umask(umask)
    temps: dict[Path, str] = {}
    try:
        for path, data in files.items():
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                temps[path] = tmp
                _write_all(fd, data)
                os.chmod(tmp, 0o666 & ~umask)
            except OSError as exc:
                raise AtomicWriteError(path, exc) from exc
        placed: list[Path] = []
        for path, tmp in temps.items():
            try:
                os.replace(tmp, path)
            except OSError as exc:
                for done in placed:
                    done.unlink(missing_ok=True)
                raise AtomicWriteError(path, exc) from exc
            placed.append(path)
    finally:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)  # already renamed after a success: a no-op


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename (the folder is
    created if missing), with the mode of an ordinary new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_files({path: data})
    except AtomicWriteError as exc:  # callers see the OSError itself
        raise (exc.__cause__ if isinstance(exc.__cause__, OSError) else exc) from None
