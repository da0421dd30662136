"""Errors a user can cause. The CLI prints them as one line and exits non-zero (traceback with --debug)."""


class TracetuneError(Exception):
    """Base for every error caused by user input or the environment, not by a bug in tracetune."""


class ModelSpecError(TracetuneError):
    """A model spec string that cannot be resolved."""


class ModelError(TracetuneError):
    """A model backend that cannot load or answer (missing file, unreachable server, ...)."""


class SandboxError(TracetuneError):
    """A malformed sandbox request, or a sandbox that cannot start."""
