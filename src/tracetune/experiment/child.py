"""Running one loop stage in a fresh child process.

Why a child: libraries a stage leaves behind (torch's thread pools after training, loaded models)
cannot slow the next stage, the stage's peak memory is its own, and its output goes to its log
file instead of the terminal. The child dies with the parent (PR_SET_PDEATHSIG), so a killed loop
never leaves a stage writing behind it.

Protocol over a multiprocessing queue, child -> parent:
    ("log", text)                       a line for the terminal (also in the log file)
    ("progress", stage, done, total)    e.g. episodes finished
    ("done", summary)                   the stage's summary dict
    ("error", message)                  a TracetuneError: one line for the user
    ("crash", last_line)                any other exception (the traceback is in the log)
"""

from __future__ import annotations

import multiprocessing
import queue as queue_mod
from pathlib import Path
from typing import Callable

from tracetune.errors import TracetuneError


def run_in_child(target: Callable, args: tuple, *, name: str, log_file: Path,
                 on_log: Callable[[str], None],
                 on_progress: Callable[..., None]) -> tuple[dict, float]:
    """Run `target(*args, channel)` in a spawned process; returns (its summary, peak resident
    memory in GiB). `channel` is the queue the child reports on (see `child_main`).

    Raises TracetuneError when the child reports an error, crashes or dies (naming the log)."""
    ctx = multiprocessing.get_context("spawn")
    channel = ctx.Queue()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    child = ctx.Process(target=child_main, name=f"tracetune-{name}",
                        args=(target, args, str(log_file), channel))
    child.start()
    peak, result = 0, None
    try:
        while result is None:
            peak = max(peak, vm_hwm(child.pid))
            try:
                msg = channel.get(timeout=0.25)
            except queue_mod.Empty:
                if not child.is_alive():
                    break
                continue
            if msg[0] == "log":
                on_log(msg[1])
            elif msg[0] == "progress":
                on_progress(*msg[1:])
            else:
                result = msg
        child.join()
    except BaseException:
        child.terminate()
        child.join()
        raise
    peak_gb = round(peak / 2**30, 3)
    if result is None:
        raise TracetuneError(f"stage {name} died (exit code {child.exitcode}); see "
                             f"{log_file}; rerun to continue")
    if result[0] == "error":
        raise TracetuneError(result[1])
    if result[0] == "crash":
        raise TracetuneError(f"stage {name} failed: {result[1]}")
    return result[1], peak_gb


def child_main(target: Callable, args: tuple, log_file: str, channel) -> None:
    """The child's entry point: stdout and stderr go to `log_file`; `target(*args, channel)`'s
    return value is reported as ("done", summary)."""
    import ctypes
    import os
    import signal
    import traceback
    import warnings

    try:  # die with the loop: a killed loop must not leave a stage writing behind it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    log = open(log_file, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.simplefilter("ignore", FutureWarning)
    try:
        channel.put(("done", target(*args, channel)))
    except TracetuneError as exc:
        traceback.print_exc()
        channel.put(("error", str(exc)))
    except BaseException:
        trace = traceback.format_exc()
        print(trace, flush=True)
        channel.put(("crash", trace.strip().splitlines()[-1]))


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a live process, in bytes (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
