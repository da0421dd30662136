"""Run untrusted, model-written Python code and report a structured verdict.

How it works
------------
A `Sandbox` starts one long-lived *zygote* process (`tracetune.sandbox.zygote`) that has already
imported pytest and the common standard library. Every check is one fresh process forked from the
zygote, so a check pays for a `fork()` instead of a new interpreter plus pytest's import (about
0.3 s on a small CPU). Each check runs in its own temporary directory, under its own resource limits,
and is killed as a whole process tree when it ends or times out. Up to `workers` checks run at once.

Threat model: what IS isolated
------------------------------
With bubblewrap (`bwrap`) available (mode "bwrap", the default when it works):
  * network: the zygote lives in a fresh network namespace; no route out, not even to loopback;
  * filesystem: the host is mounted read-only; /tmp is a private tmpfs; only the check's own work
    directory is writable;
  * processes: a private PID namespace; the sandbox cannot see or signal host processes.
In every mode:
  * time: a wall-clock timeout kills the whole process tree (process group, orphans re-parented to
    the check's monitor, and - when run as root - every process of the check's private uid);
  * resources: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE (file size), RLIMIT_CORE=0, and
    RLIMIT_NPROC (number of processes);
  * output: stdout/stderr are read through pipes and capped; the rest is counted and discarded.
When the host process runs as root (CI, containers), every concurrent check also runs under its own
unprivileged uid, leased host-wide (no two live sandboxes on a host share one): RLIMIT_NPROC binds (it does not for root), the check cannot
write host files, and a sweep of that uid kills anything it left behind. The check keeps one
capability, CAP_DAC_READ_SEARCH (read-only access), so it can import the interpreter's libraries
even when they live under a private home directory. Without bwrap, a root host also gives each
check a fresh, empty network namespace (`unshare(CLONE_NEWNET)`).

What is NOT isolated
--------------------
  * Reading host files: the check can read what the host user can read (with bwrap: the read-only
    host view). Do not keep secrets where model-written code runs.
  * The verdict against adversarial code: tests run in the same process as the code under test, so
    code written to forge pytest's report can do so. The sandbox protects the host, not the reward.
  * Kernel attacks: this is namespaces and rlimits, not a VM. Use a VM or gVisor for hostile users.
  * Weaker fallback (no bwrap, not root): no network isolation, no read-only host view, RLIMIT_NPROC
    counts all of the user's processes, a program that calls `kill(-1)` can signal the user's other
    processes. tracetune warns when it runs in this mode (`isolation="process"`).
"""

from tracetune.sandbox.core import (
    Job,
    Sandbox,
    SandboxConfig,
    SandboxResult,
    TestOutcome,
    detect_isolation,
)

__all__ = [
    "Job",
    "Sandbox",
    "SandboxConfig",
    "SandboxResult",
    "TestOutcome",
    "detect_isolation",
]
