"""Staging directories: a command writes its output into a hidden directory beside the target
and renames it into place only when complete, so a failed or killed command leaves what was
there. A killed command cannot clean up after itself; the next command that stages in the same
place removes what dead processes left (their pid is in the name)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new directory `parent/.PREFIX-PID-XXXXXXXX` (created with `parent` if needed), after
    removing the `.PREFIX-PID-*` directories whose process no longer runs."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f".{prefix}-*-*"):
        pid = old.name[len(prefix) + 2:].split("-", 1)[0]
        if old.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{prefix}-{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
