"""tracetune: turn a coding agent's own runs into a better small model."""

__version__ = "0.1.0"
