"""Atomic file writes: a temporary file beside the target, then a rename.

A run killed mid-way never leaves a half-written file under the final name (the
temporary one starts with a dot and ends in ``.partial``).  The file gets the
permissions a plain ``open(path, "w")`` would give (0666 less the umask), not
``mkstemp``'s private 0600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path, write) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _read_umask() -> int:
    # read once, at import: setting and restoring the umask later would briefly
    # change it for every thread of the process
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
