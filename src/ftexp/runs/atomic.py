"""Atomic file writes: a reader (or a run started after a crash) sees a file's old content or
its new content, never half of it.

Every write goes to a temporary file in the target's own folder (so the final rename stays on
one file system), is flushed and fsync'ed, then renamed onto the target with `os.replace`
(atomic on POSIX and Windows); the folder is fsync'ed too where the platform allows, so the
rename itself survives a power cut. When anything fails before the rename, the temporary file
is removed and the target is left as it was. Missing parent folders are created.

    with atomic_path(path) as tmp:            # any writer that takes a path
        frame.to_csv(tmp, index=False)         # (or torch.save(obj, tmp), OmegaConf.save(cfg, tmp))
    with atomic_open(path, "w") as f:         # a file object, text or binary ("wb")
        f.write(text)
    write_text(path, text); write_bytes(path, data); write_json(path, payload)
    replace(source, target)                   # a rename that survives a crash

Temporary files are hidden and end in `.tmp`: `.<name>.<random>.tmp`, or `.<name>.tmp` with
`unique=False` (one writer per target, e.g. checkpoints: a leftover from a killed run is reused
instead of piling up). They are created with the usual permissions (0o666 less the umask), so
the target gets the same mode a plain `open(path, "w")` would give it.

Standard library only: the sweeper plugin, the report and the training loop all import it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"
_ATTEMPTS = 100
# fsync errors that mean "this file system does not do fsync", not "the data did not get there".
_FSYNC_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP))


def temp_path(target: str | os.PathLike[str], unique: bool = True) -> Path:
    """The temporary name a write of `target` goes through (hidden, in the same folder)."""
    target = Path(target)
    token = f".{secrets.token_hex(4)}" if unique else ""
    return target.with_name(f".{target.name}{token}{TMP_SUFFIX}")


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data to the disk (errors such as EIO or ENOSPC are raised)."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows: needs write access
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a folder's entries (a rename, a new file) durable. A no-op where folders cannot be
    opened or fsync'ed (Windows, some network file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike[str]) -> None:
    """fsync every file and folder under `folder` (and `folder` itself): before a whole staged
    folder is renamed into place, so the rename never publishes files whose data is not on disk."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_dir(root)


def make_parents(folder: str | os.PathLike[str]) -> None:
    """Create `folder` and its missing parents, durably (each new entry's folder is fsync'ed)."""
    folder = Path(folder)
    missing = []
    while not folder.is_dir() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    if not missing:
        return
    missing[0].mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)


def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """`os.replace(source, target)`, then the folder(s) fsync'ed so the rename survives a crash."""
    os.replace(source, target)
    fsync_dir(Path(target).parent)
    if Path(source).parent != Path(target).parent:
        fsync_dir(Path(source).parent)


def _reserve(target: Path, unique: bool) -> Path:
    """Create the (empty) temporary file, so two writers never share one."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0) | (os.O_EXCL if unique else os.O_TRUNC)
    for _ in range(_ATTEMPTS if unique else 1):
        tmp = temp_path(target, unique)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name beside the target", str(target))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, unique: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` for any writer to write (it exists, empty); when the
    block ends without an error it is fsync'ed and renamed onto `path`, else removed.

    The temporary name ends in `.tmp`, not in `path`'s suffix: writers that pick a format by
    suffix (matplotlib's savefig, pandas' compression="infer") need it passed explicitly."""
    target = Path(path)
    make_parents(target.parent)
    tmp = _reserve(target, unique)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = None,
                newline: str | None = None, unique: bool = True) -> Iterator[IO[Any]]:
    """`open(path, mode)` for writing ("w", "wt" or "wb"), atomically: the file object writes to a
    temporary file that replaces `path` when the block ends without an error. Text is UTF-8
    unless `encoding` says otherwise."""
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w', 'wt' or 'wb', not '{mode}'")
    binary = "b" in mode
    if not binary and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, unique=unique) as tmp, open(tmp, mode, encoding=encoding, newline=newline) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike[str], data: bytes, *, unique: bool = True) -> None:
    with atomic_open(path, "wb", unique=unique) as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8", *,
               newline: str | None = None, unique: bool = True) -> None:
    with atomic_open(path, "w", encoding=encoding, newline=newline, unique=unique) as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int | None = 2,
               sort_keys: bool = True, default: Any = str, unique: bool = True) -> None:
    """`payload` as JSON (sorted keys, indented, anything unknown as its str) and a final newline."""
    text = json.dumps(payload, indent=indent, sort_keys=sort_keys, default=default)
    write_text(path, text + "\n", unique=unique)
