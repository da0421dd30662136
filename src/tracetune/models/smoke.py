"""`python -m tracetune.models.smoke`: decode a few tokens of the embedded model through llama.cpp.

`make setup` runs this once after installing. A llama-cpp-python wheel built with -march=native on
one CPU and reused from pip's cache on another installs and imports fine, then dies with SIGILL at
the first decode; this check is where that shows up (a non-zero exit, or the process killed by the
signal), so the Makefile can rebuild the wheel for this machine instead of failing mid-test.

Exit status: 0 when llama.cpp decoded; 1 with a message on stderr when the model or backend is
missing or raised; killed by a signal when the build does not run on this CPU.
"""

from __future__ import annotations

import sys


def main() -> int:
    from tracetune.errors import TracetuneError
    from tracetune.models import load_model
    from tracetune.types import GenerationRequest, Message, SamplingParams

    try:
        model = load_model("embedded")
        request = GenerationRequest(messages=(Message("user", "Say hi."),),
                                    params=SamplingParams(max_tokens=4, temperature=0.0))
        model.generate(request)
    except (TracetuneError, ImportError, OSError) as exc:
        print(f"llama.cpp smoke check failed: {exc}", file=sys.stderr)
        return 1
    print("llama.cpp decodes on this CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
