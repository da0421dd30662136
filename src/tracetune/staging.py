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
    for old in abandoned(parent, prefix):
        shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f".{prefix}-{os.getpid()}-", dir=parent))
    # mkdtemp makes it owner-only; the output it becomes gets the usual mode (umask applied).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path


def abandoned(parent: Path, prefix: str) -> list[Path]:
    """The `parent/.PREFIX-PID-*` staging directories whose process no longer runs (what a
    killed command left), newest first."""
    found = []
    for old in Path(parent).glob(f".{prefix}-*-*"):
        pid = old.name[len(prefix) + 2:].split("-", 1)[0]
        if old.is_dir() and pid.isdigit() and not _alive(int(pid)):
            found.append(old)
    return sorted(found, key=_mtime, reverse=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def check_output_file(target: Path, *, force: bool = False, inputs: tuple[Path, ...] = (),
                      option: str = "--out") -> None:
    """Refuse an output file that would destroy data, before any work: a directory, one of the
    command's own `inputs` (even with `force`), or an existing file without `force`. Raises
    TracetuneError (one line naming the option, the path and the fix)."""
    from tracetune.errors import TracetuneError

    target = Path(target)
    if target.is_dir():
        raise TracetuneError(f"{option} {target} is a directory; give a file path")
    _no_file_above(target, option)
    real = os.path.realpath(target)
    for src in inputs:
        if real == os.path.realpath(src):
            raise TracetuneError(f"{option} {target} is this command's own input; write the "
                                 "output somewhere else")
    if target.exists() and not force:
        raise TracetuneError(f"{option} {target} already exists; pass --force to replace it, "
                             "or choose another path")


class atomic_file:
    """`with atomic_file(path) as f:` writes text to `.NAME.PID.tmp` beside `path` and renames it
    onto `path` only when the block ends without an error, so a failed or killed command leaves
    what was there. Temp files of dead processes beside `path` are removed first."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __enter__(self):
        parent = self.target.parent
        parent.mkdir(parents=True, exist_ok=True)
        for old in parent.glob(f".{self.target.name}.*.tmp"):
            pid = old.name[len(self.target.name) + 2:-4]
            if pid.isdigit() and not _alive(int(pid)):
                old.unlink(missing_ok=True)
        self.tmp = parent / f".{self.target.name}.{os.getpid()}.tmp"
        self.file = open(self.tmp, "w", encoding="utf-8")
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)


def check_output_dir(target: Path, *, option: str = "--out") -> None:
    """Refuse an output folder that cannot be one, before any work: an existing file, or a path
    under a file. Raises TracetuneError (one line naming the option and the path)."""
    from tracetune.errors import TracetuneError

    target = Path(target)
    if target.exists() and not target.is_dir():
        raise TracetuneError(f"{option} must be a directory: {target} is a file")
    _no_file_above(target, option)


def _no_file_above(target: Path, option: str) -> None:
    """Raise TracetuneError when the nearest existing folder above `target` is a file."""
    from tracetune.errors import TracetuneError

    for parent in Path(target).parents:
        if parent.exists():
            if not parent.is_dir():
                raise TracetuneError(f"{option} {target}: {parent} is a file, not a folder")
            return
