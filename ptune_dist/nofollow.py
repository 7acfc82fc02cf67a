"""Writing without following a symbolic link that ptune did not make; the one atomic write and the one rename.

    write_atomic(path, data, mode=None)  THE atomic file write of the source: a temporary file in the same
                                         folder (created O_CREAT|O_EXCL|O_NOFOLLOW), written, fsynced, given
                                         `mode` (default: what the umask gives a new file, 0o666 & ~umask),
                                         then `publish`ed over `path`. A crash at any moment leaves the old
                                         file or the new one, never half of one; a link at `path` is refused.
    publish(src, dst, sync=True)         the one rename: `src` (a file or a folder) takes the name `dst` in
                                         one step (os.replace, same file system), then `dst`'s folder is
                                         fsynced so the new name survives a power loss. Checkpoint folders
                                         (atomic.py), the embedded models, built libraries and the benches'
                                         model folders go through it; no other module calls os.replace or a
                                         rename (tests/test_atomic_write.py greps for them).
    fsync_path(path)                     fsync a file or a folder by name.

ptune writes its files by name inside folders a user chose (output_dir, --out, launch.log_dir). A name
there that is a symbolic link was put there by someone else: writing through it would overwrite what it
points to (another run's files, a user's notes). So every file a run writes is either opened with
O_NOFOLLOW (`open_append`, the lock) or replaced through a fresh temporary file beside it (created
O_CREAT|O_EXCL, which never follows a link) and os.replace (`write_atomic`); a name that is a link is
refused with a PtuneError naming it and where it points, and nothing is written.

The folders a user names may themselves be, or lie below, links (a run folder on scratch space linked from
home): that is the user's choice. The folders ptune makes inside them (checkpoints/, final/, report/,
cells/<id>/, ensembles/) are made by `own_dir`, which refuses one that is a link.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ptune_dist.errors import PtuneError


def umask() -> int:
    """This process's umask, read without changing it where Linux shows it (/proc, since 4.7);
    elsewhere set and restored, which races with a thread creating a file in between."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def link_error(path, remedy: str = "remove the link, or choose another folder") -> PtuneError:
    path = Path(path)
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return PtuneError(
        f"{path} is a symbolic link (to {target}); ptune never writes through a link it did not "
        f"make: {remedy} (nothing was written there)"
    )


def refuse_link(path, remedy: str = "remove the link, or choose another folder") -> Path:
    """`path`, unless it is a symbolic link (then the error naming it)."""
    path = Path(path)
    if path.is_symlink():
        raise link_error(path, remedy)
    return path


def open_fd(path, flags: int, mode: int = 0o666) -> int:
    """os.open with O_NOFOLLOW; a link is the error naming it, other OSErrors pass through."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise link_error(path) from None
        raise


def open_append(path):
    """A text file opened for appending (created when missing), never through a link."""
    return os.fdopen(open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")


def own_dir(path) -> Path:
    """A folder ptune makes inside one the user chose: made with its parents, refused when it is a link."""
    path = refuse_link(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fsync_path(path) -> None:
    """fsync a file or a folder (its entries: a rename in it) by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(src, dst, sync: bool = True) -> Path:
    """`src` renamed to `dst` in one step (os.replace: a file replaces a file, a folder an absent name or an
    empty folder), then, with `sync`, `dst`'s folder fsynced so the rename is on disk. `dst` is a name, never
    followed: a link there is replaced, not what it points to (callers that must refuse one check first)."""
    dst = Path(dst)
    os.replace(src, dst)
    if sync:
        fsync_path(dst.absolute().parent)
    return dst


def write_atomic(path, data: bytes | str, mode: int | None = None) -> Path:
    """`data` into `path`, all or nothing, never through a link (one at `path` is refused): a temporary file
    beside it (O_EXCL, no link followed), fsynced, chmod `mode` (default 0o666 & ~umask, what a new file gets),
    published over `path` and the folder fsynced (see the module docstring)."""
    path = refuse_link(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    mode = 0o666 & ~umask() if mode is None else mode
    fd, tmp = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.name}.", suffix=".tmp")  # O_EXCL
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600
        publish(tmp, path)  # replaces a name, never follows one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
