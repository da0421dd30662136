"""Progress of long stage work as text lines: episodes or training steps done of a total, the
rate, the time left and (training) the loss.

A stage reports `progress(stage, done, total, note)`; `ProgressLines` turns those calls into one
line at the first report, then at most one every `interval_s` seconds, and one at the end, so a
stage log (and a terminal that is not interactive, e.g. CI or `| tee`) shows steady progress
without one line per episode. The interactive terminal draws a bar instead (the CLI).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class ProgressLines:
    """Throttled progress lines, one stream per stage (not thread-safe: one caller at a time).

    `line(stage, done, total, note)` returns the line to print, or None when the last one is
    less than `interval_s` seconds old (the first and the final report, done == total, always
    give a line). Format: "[STAGE] DONE/TOTAL UNIT (PCT%), RATE UNIT/s, ETA DURATION[, NOTE]";
    rate and ETA are measured from the stage's first report.
    """

    interval_s: float = 15.0
    clock: object = time.monotonic
    _start: dict[str, tuple[float, int]] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)

    def line(self, stage: str, done: int, total: int, note: str = "") -> str | None:
        now = self.clock()
        t0, done0 = self._start.setdefault(stage, (now, done))
        final = total > 0 and done >= total
        if stage in self._last and not final and now - self._last[stage] < self.interval_s:
            return None
        self._last[stage] = now
        unit = "steps" if stage.endswith("train") else "episodes"
        parts = [f"[{stage}] {done}/{total} {unit}" +
                 (f" ({100 * done / total:.0f}%)" if total else "")]
        elapsed = now - t0
        if elapsed > 0 and done > done0:
            rate = (done - done0) / elapsed
            parts.append(f"{rate:.2f} {unit}/s" if rate < 10 else f"{rate:.0f} {unit}/s")
            if not final and total:
                parts.append(f"ETA {_duration((total - done) / rate)}")
        if final:
            parts.append(f"took {_duration(elapsed)}")
        if note:
            parts.append(note)
        if final:
            self._start.pop(stage, None)
            self._last.pop(stage, None)
        return ", ".join(parts)
