"""Check that an output folder or file can be written before the work starts (one-line OsmError naming the path).

The probe creates and removes an empty temporary file in the deepest existing folder of the path, so nothing is left
behind and a folder that does not exist yet is not created. Running out of space during the work is reported by
``utilities.atomic`` instead.
"""
from __future__ import annotations

import os
import tempfile

from osmedseg.errors import OsmError


def check_writable_folder(path: str, flag: str) -> None:
    """OsmError unless the folder ``path`` (given with ``flag``) exists or can be created, and can be written."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "" if existing == os.path.abspath(path) else f" ({existing})"
        raise OsmError(f"{flag} {path}: is a file{where}, expected a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp_probe_", dir=existing)
    except OSError as e:
        raise OsmError(f"{flag} {path}: cannot write into {existing} ({e.strerror})") from None
    os.close(fd)
    os.remove(probe)


def check_writable_file(path: str, flag: str) -> None:
    """OsmError unless ``path`` is not a folder and its folder can be written."""
    if os.path.isdir(path):
        raise OsmError(f"{flag} {path}: is a folder, expected a file name")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), flag)
