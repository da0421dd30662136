import os

import pytest


def _proc_cmdlines():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    yield int(entry), f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass


@pytest.fixture
def processes_with():
    """Live (non-zombie) processes whose command line contains a marker."""
    def find(marker: str) -> list[int]:
        found = []
        for pid, cmd in _proc_cmdlines():
            if marker in cmd and pid != os.getpid():
                try:
                    with open(f"/proc/{pid}/stat", "rb") as f:
                        state = f.read().rsplit(b")", 1)[1].split()[0]
                except OSError:
                    continue
                if state != b"Z":
                    found.append(pid)
        return found
    return find
