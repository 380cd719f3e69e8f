"""Atomic file writes: write to a temporary name in the same folder, then rename.

A write that fails because the disk is full, the quota is exceeded or the folder is read-only becomes a one-line
OsmError naming the file (writers that do not raise OSError, such as SimpleITK's, are recognised by the free space
left when they fail).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from osmedseg.errors import OsmError

_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMPORARY = re.compile(r"^\.tmp_(\d+)_")
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EISDIR}
_NEARLY_FULL = 1 << 20  # bytes free below which a failed write is blamed on the full disk


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        os.makedirs(folder, exist_ok=True)
        # keep the full ending (e.g. .nii.gz) so writers that pick a format by name still work
        fd, tmp = tempfile.mkstemp(prefix=f".tmp_{os.getpid()}_", suffix=f"_{base}", dir=folder)
    except OSError as e:
        raise OsmError(f"{path}: cannot write ({e.strerror})") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates owner-only files; give outputs the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in _WRITE_ERRORS:
            raise OsmError(f"{path}: cannot write ({e.strerror})") from None
        raise
    except Exception:
        if shutil.disk_usage(folder).free < _NEARLY_FULL:
            raise OsmError(f"{path}: cannot write (no space left on device)") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files that ``atomic_path`` left in ``folder`` when its process was killed mid-write.

    Only files whose writing process no longer exists are removed, so a concurrent writer is left alone.
    Returns the removed paths.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        match = _TEMPORARY.match(name)
        if match and not _process_alive(int(match.group(1))):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def save_json_atomic(obj: Any, path: str, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=False)


def save_npz_atomic(path: str, compress: bool = True, **arrays: np.ndarray) -> None:
    """Write arrays to an ``.npz`` file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)


def torch_save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
