"""The sandbox's zygote: a warm interpreter that forks one process per check.

Protocol (one JSON object per line on stdin, see `core.Sandbox._request`):
  {"id", "dir", "kind": "program"|"pytest", "entry", "select" (pytest node ids), "timeout_s", "memory_mb", "cpu_s",
   "file_size_mb", "max_procs", "output_cap", "uid" (int or null), "result" (path)}
For each request the zygote forks a *monitor*; the monitor forks the *worker* that runs the code,
reads its output, enforces the timeout, kills what it left behind, writes the result JSON to
`result` and then writes "done ID" to stdout (a short write, atomic on a pipe).

Only the standard library and pytest are used here: this module is the hot path and it runs inside
the sandbox, where nothing should be imported lazily after privileges are dropped.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import select
import shutil
import signal
import sys
import time
import traceback

# Warm imports: paid once by the zygote instead of once per check.
os.environ.setdefault("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
import pytest  # noqa: E402
import _pytest.assertion.rewrite  # noqa: E402,F401
import runpy  # noqa: E402
import collections, dataclasses, datetime, decimal, fractions, functools, heapq  # noqa: E401,E402,F401
import itertools, math, random, re, string, typing, unittest, subprocess, socket  # noqa: E401,E402,F401

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_CAP_DAC_READ_SEARCH = 2
_CLONE_NEWNET = 0x40000000
_REPORT_FD = 3  # the worker's report channel (JSON), next to stdout=1 and stderr=2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_to_uid(uid: int) -> None:
    """Become `uid` (and gid), keeping only CAP_DAC_READ_SEARCH, also across execve (ambient)."""
    if _LIBC.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    bit = 1 << _CAP_DAC_READ_SEARCH
    data[0].effective = data[0].permitted = data[0].inheritable = bit
    if _LIBC.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    if _LIBC.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAP_AMBIENT_RAISE)")


def _count_processes_of(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


class _Recorder:
    """pytest plugin: per-test outcomes, written as JSON to the report fd at session end."""

    def __init__(self) -> None:
        self.tests: list[dict] = []
        self.collect_errors: list[str] = []
        self.collect_skips: list[str] = []
        self.deselected = 0

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors.append(f"{report.nodeid}: {str(report.longrepr)[-2000:]}")
        elif report.skipped:  # a module-level pytest.skip(): its tests never run
            self.collect_skips.append(f"{report.nodeid}: {str(report.longrepr)[-500:]}")

    def pytest_collection_finish(self, session):
        # Sent before any test runs: a test that ends the process (os._exit) cannot hide the
        # tests after it.
        _report({"collected": [item.nodeid for item in session.items]})

    def pytest_deselected(self, items):
        self.deselected += len(items)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed) or (
            report.when == "teardown" and report.failed
        ):
            message = "" if report.passed else str(report.longrepr)[-2000:]
            outcome = report.outcome
            if hasattr(report, "wasxfail"):  # an expected failure is not a pass, nor a failure
                outcome = "xpassed" if report.passed else "xfailed"
            crash = getattr(report.longrepr, "reprcrash", None)
            raised = ""
            if report.failed and crash is not None and crash.message:
                raised = crash.message.split(":", 1)[0].strip()
            self.tests.append({"nodeid": report.nodeid, "outcome": outcome,
                               "when": report.when, "message": message, "raised": raised,
                               "duration_s": round(report.duration, 6)})

    def pytest_sessionfinish(self, session, exitstatus):
        _report({"tests": self.tests, "collect_errors": self.collect_errors,
                 "collect_skips": self.collect_skips, "deselected": self.deselected,
                 "exitstatus": int(exitstatus)})


def _report(obj: dict) -> None:
    try:
        os.write(_REPORT_FD, (json.dumps(obj) + "\n").encode())
    except OSError:
        pass


def _worker(req: dict, out_w: int, err_w: int, rep_w: int, privileged: bool, in_bwrap: bool):
    """Runs in the forked worker process; never returns."""
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(rep_w, _REPORT_FD)
        os.closerange(_REPORT_FD + 1, 1024)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        os.chdir(req["dir"])
        if privileged and not in_bwrap:
            if _LIBC.unshare(_CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (req["memory_mb"] * mb, req["memory_mb"] * mb))
        cpu = int(req["cpu_s"])
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        fsize = req["file_size_mb"] * mb
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        uid = req.get("uid")
        if uid is not None:
            nproc = req["max_procs"]
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            _drop_to_uid(uid)
        else:
            # Not root: RLIMIT_NPROC counts every process of this user, so allow what runs now.
            nproc = _count_processes_of(os.getuid()) + req["max_procs"]
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": req["dir"],
                           "TMPDIR": req["dir"], "LANG": "C.UTF-8",
                           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
                           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
        sys.path.insert(0, req["dir"])
        sys.dont_write_bytecode = True
        entry = req["entry"]
        if req["kind"] == "pytest":
            sys.argv = ["pytest", entry]
            code = int(pytest.main(
                [*(req.get("select") or [entry]), *(["-x"] if req.get("exitfirst") else []),
                 "-q", "-p", "no:cacheprovider", "--rootdir", req["dir"], "-c", os.devnull,
                 # No conftest.py above the job directory is loaded, and pytest does not walk the
                 # directories above it (in process mode that is the host's /tmp: slow).
                 "--confcutdir", req["dir"],
                 "-o", "addopts=", "--no-header", "-rN", "--tb=short"],
                plugins=[_Recorder()]))
        else:
            sys.argv = [entry]
            try:
                runpy.run_path(entry, run_name="__main__")
                code = 0
            except SystemExit as exc:
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
    except MemoryError:
        _report({"limit": "memory"})
        code = 1
    except SyntaxError as exc:
        _report({"error": f"SyntaxError: {exc}"})
        traceback.print_exc()
        code = 1
    except BaseException:  # noqa: BLE001 - the worker reports every failure and exits
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    os._exit(code & 0xFF)


def _leftovers(parent: int, uid: int | None) -> tuple[list[int], bool]:
    """One pass over /proc: live children of `parent`, and whether any live process has `uid`."""
    kids, owned = [], False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            st_uid = os.stat(f"/proc/{entry}").st_uid if uid is not None else None
        except OSError:
            continue
        # The command name (field 2) may contain spaces: split after its closing ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) < 2 or fields[0] == b"Z":  # zombies are already dead
            continue
        if int(fields[1]) == parent:
            kids.append(int(entry))
        if st_uid is not None and st_uid == uid:
            owned = True
    return kids, owned


def _sweep_uid(uid: int) -> None:
    """Kill every process of `uid`: fork a helper that becomes `uid` and calls kill(-1, SIGKILL)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(3):
                os.kill(-1, signal.SIGKILL)  # every process this uid may signal, except us
        except OSError:
            pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _reap_all(worker_pid: int, uid: int | None) -> None:
    """Kill the worker's process group, its orphans (re-parented to us) and, as root, its uid."""
    try:
        os.killpg(worker_pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    me = os.getpid()
    for _ in range(200):
        _reap_zombies()
        kids, owned = _leftovers(me, uid)
        if not kids and not owned:
            return
        if owned:
            _sweep_uid(uid)
        for kid in kids:
            try:
                os.kill(kid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.002)


def _monitor(req: dict, privileged: bool, in_bwrap: bool) -> dict:
    _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    rep_r, rep_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(out_r), os.close(err_r), os.close(rep_r)
        _worker(req, out_w, err_w, rep_w, privileged, in_bwrap)
    for fd in (out_w, err_w, rep_w):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    cap = req["output_cap"]
    bufs = {out_r: bytearray(), err_r: bytearray(), rep_r: bytearray()}
    totals = {out_r: 0, err_r: 0, rep_r: 0}
    open_fds = {out_r, err_r, rep_r}
    deadline = t0 + req["timeout_s"]
    timed_out = False
    status = None
    exited_at = None
    while True:
        now = time.monotonic()
        if status is None and now >= deadline:
            timed_out = True
            break
        # After the worker exits, give descendants holding the pipes a moment, then stop reading.
        if status is not None and (not open_fds or now - exited_at > 0.05):
            break
        wait = (deadline - now) if status is None else 0.05
        watch = list(open_fds) + ([pidfd] if status is None else [])
        readable, _, _ = select.select(watch, [], [], max(wait, 0.0))
        for fd in readable:
            if fd == pidfd:
                _, status = os.waitpid(pid, 0)
                exited_at = time.monotonic()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            totals[fd] += len(chunk)
            limit = cap if fd != rep_r else 1 << 22
            room = limit - len(bufs[fd])
            if room > 0:
                bufs[fd] += chunk[:room]
    duration_s = time.monotonic() - t0
    uid = req.get("uid")
    _reap_all(pid, uid)
    if status is None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = -1
    os.close(pidfd)
    for fd in bufs:
        os.close(fd)
    report: dict = {}
    for line in bytes(bufs[rep_r]).decode("utf-8", "replace").splitlines():
        try:
            report.update(json.loads(line))
        except ValueError:
            pass
    result = {
        "id": req["id"],
        "timed_out": timed_out,
        "exit_code": os.waitstatus_to_exitcode(status) if status not in (None, -1) else None,
        "stdout": bytes(bufs[out_r]).decode("utf-8", "backslashreplace"),
        "stderr": bytes(bufs[err_r]).decode("utf-8", "backslashreplace"),
        "stdout_bytes": totals[out_r],
        "stderr_bytes": totals[err_r],
        "duration_s": duration_s,
        "report": report,
    }
    return result


def _serve(privileged: bool, in_bwrap: bool) -> None:
    out_fd = os.dup(1)
    # Children are reaped by the kernel; each monitor announces its own completion.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    os.write(out_fd, b"ready\n")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid:
            continue
        # --- monitor process ---
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            result = _monitor(req, privileged, in_bwrap)
        except BaseException as exc:  # noqa: BLE001 - must always answer
            result = {"id": req.get("id"), "internal_error": f"{type(exc).__name__}: {exc}"}
        try:
            tmp = req["result"] + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(result, f)
            os.replace(tmp, req["result"])
        finally:
            os.write(out_fd, f"done {req['id']}\n".encode())
            os._exit(0)


def _warm_pytest() -> None:
    """Run pytest once on a throwaway test file before serving: pytest imports most of its
    plugins' modules lazily, during its first run, so without this every check paid for them
    (measured on 2 cores: about 4x the per-check cost of a warm run). The zygote's own stdout is
    the protocol channel, so the run's output goes to /dev/null; the file, its directory, its
    module and its sys.path entry are removed afterwards."""
    import tempfile

    work = tempfile.mkdtemp(prefix="tracetune-warm-")
    path = os.path.join(work, "test_tracetune_warm.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write("import pytest\n\n@pytest.mark.parametrize('x', [1, 2])\n"
                "def test_warm(x):\n    assert x\n")
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    path_before = list(sys.path)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        pytest.main([path, "-q", "-p", "no:cacheprovider", "--rootdir", work, "-c", os.devnull,
                     "--confcutdir", work,
                     "-o", "addopts=", "--no-header", "-rN", "--tb=short"])
    except BaseException:  # noqa: BLE001 - warming is an optimisation; never fatal
        pass
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        sys.modules.pop("test_tracetune_warm", None)
        sys.path[:] = path_before
        shutil.rmtree(work, ignore_errors=True)
        tempfile.tempdir = None  # each check finds its own TMPDIR (the cache would say /tmp)


def main() -> None:
    privileged = os.geteuid() == 0 and os.environ.get("TRACETUNE_SANDBOX_PRIVILEGED", "1") == "1"
    in_bwrap = os.environ.get("TRACETUNE_SANDBOX_BWRAP") == "1"
    _warm_pytest()
    # Every object alive now is shared with the forked checks: move them out of the cyclic
    # collector's reach (gc.freeze, Python >= 3.7, made for pre-fork servers), so a collection in
    # a check (pytest runs one at the end of every session) neither walks them nor writes to
    # their headers, which would copy their pages into the check.
    gc.collect()
    gc.freeze()
    _serve(privileged, in_bwrap)


if __name__ == "__main__":
    main()
