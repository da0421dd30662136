"""`tracetune logs baseline`: seed 003's baseline profile of logged interactions.

For all interactions and per agent role: count, success rate (status ok) with its Wilson 95%
interval, latency in seconds (mean with a bootstrap 95% interval of the mean, median, min,
max, p95), time to first token (streamed calls), output length (characters), prompt and
completion tokens (mean and total), and the provider and model mix (counts and shares).
Percentiles are numpy's linear interpolation (numpy.percentile); the mean's interval is
scipy.stats.bootstrap's BCa interval over interactions (9,999 resamples, seed 0).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tracetune.logs.record import ROLES, Interaction


def _mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    if len(values) < 2 or len(set(values)) < 2:
        return (values[0], values[0]) if values else (None, None)
    import numpy as np
    from scipy.stats import bootstrap

    res = bootstrap((np.asarray(values),), np.mean, n_resamples=9999, confidence_level=0.95,
                    method="BCa", random_state=0)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def latency_stats(values: list[float]) -> dict:
    """{n, mean, mean_ci, median, min, max, p95} of seconds (None when there are none)."""
    import numpy as np

    if not values:
        return {"n": 0, "mean": None, "mean_ci": [None, None], "median": None, "min": None,
                "max": None, "p95": None}
    a = np.asarray(values, dtype=float)
    return {"n": len(values), "mean": float(a.mean()), "mean_ci": list(_mean_ci(values)),
            "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
            "p95": float(np.percentile(a, 95))}


def profile_of(records: list[Interaction]) -> dict:
    """The profile (module docstring) of one group of interactions (JSON data)."""
    from tracetune.stats import wilson_interval

    n = len(records)
    ok = sum(r.status == "ok" for r in records)
    done = [r for r in records if r.status == "ok"]

    def mix(key) -> dict:
        counts = Counter(key(r) or "(unknown)" for r in records)
        return {k: {"n": v, "share": v / n} for k, v in counts.most_common()}

    def tokens(attr) -> dict:
        vals = [getattr(r, attr) for r in done if getattr(r, attr) is not None]
        return {"mean": sum(vals) / len(vals) if vals else None, "total": sum(vals),
                "known": len(vals)}

    lo, hi = wilson_interval(ok, n) if n else (None, None)
    return {
        "n": n, "successes": ok, "success_rate": ok / n if n else None,
        "success_ci": [lo, hi],
        "latency_s": latency_stats([r.latency_s for r in records if r.latency_s is not None]),
        "ttft_s": latency_stats([r.ttft_s for r in records if r.ttft_s is not None]),
        "output_chars": latency_stats([float(len(r.response)) for r in done]),
        "prompt_tokens": tokens("prompt_tokens"),
        "completion_tokens": tokens("completion_tokens"),
        "providers": mix(lambda r: r.provider), "models": mix(lambda r: r.model),
    }


def baseline_profile(records: list[Interaction]) -> dict:
    """{"all": profile, "roles": {role: profile}} (roles: as classified; unclassified records
    count under "(unclassified)")."""
    by_role: dict[str, list[Interaction]] = {}
    for r in records:
        by_role.setdefault(r.role or "(unclassified)", []).append(r)
    order = [r for r in ROLES if r in by_role] + \
        [r for r in by_role if r not in ROLES]
    return {"all": profile_of(records), "roles": {r: profile_of(by_role[r]) for r in order}}


def load_profile(store_dir: Path) -> dict:
    from tracetune.logs.store import LogStore

    with LogStore(store_dir) as store:
        return baseline_profile(list(store.interactions()))


def _fmt_s(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_profile(profile: dict) -> str:
    """The profile as text lines (what `tracetune logs baseline` prints)."""
    lines = []
    for name, p in [("all", profile["all"]), *profile["roles"].items()]:
        lat = p["latency_s"]
        ci = p["success_ci"]
        lines.append(
            f"{name:14s} n={p['n']:4d}  success {100 * (p['success_rate'] or 0):5.1f}% "
            f"[{100 * (ci[0] or 0):5.1f}%, {100 * (ci[1] or 0):5.1f}%]  latency mean "
            f"{_fmt_s(lat['mean'])} s [{_fmt_s(lat['mean_ci'][0])}, {_fmt_s(lat['mean_ci'][1])}]"
            f"  median {_fmt_s(lat['median'])}  min {_fmt_s(lat['min'])}  max "
            f"{_fmt_s(lat['max'])}  p95 {_fmt_s(lat['p95'])}")
        ttft = p["ttft_s"]
        out = p["output_chars"]
        lines.append(
            f"{'':14s} ttft median {_fmt_s(ttft['median'])} s (n={ttft['n']})  output "
            f"{out['mean'] or 0:.0f} chars avg  tokens in/out avg "
            f"{p['prompt_tokens']['mean'] or 0:.0f}/{p['completion_tokens']['mean'] or 0:.0f}")
        if name == "all":
            for key in ("providers", "models"):
                lines.append(f"{'':14s} {key}: " + ", ".join(
                    f"{k} {v['n']} ({100 * v['share']:.1f}%)" for k, v in p[key].items()))
    return "\n".join(lines)
