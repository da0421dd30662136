"""How well does spectrum-based fault localisation find the bugs suite's faulty lines?

For every bug (the whole suite, and its held-out split), the task's tests run once under
per-test line coverage in the sandbox (`agents.localize.spectrum`) and each line of the buggy
module gets its Ochiai score. The faulty lines are those the reference fix replaces or deletes
(`localize.fault_lines`). Printed, with the standard measures of the fault-localisation
literature:

    acc@k     share of bugs with a faulty line among the k most suspicious lines, ties counted
              against the tool (a line's rank is the number of lines scoring at least as high:
              the worst case of a tied ranking), k = 1, 3, 5
    in view   share of bugs with a faulty line among what the repair agent's `localize=K`
              shows (the K best lines plus any tied with the K-th) and the lines it shows
    EXAM      the faulty line's worst-case rank over the module's non-blank lines (lower is
              better; 1.0 when no failing test executes it)
    missed    bugs whose faulty line no failing test executes (score 0)

against a baseline of reading the module top to bottom (the rank is the line's place among the
non-blank lines), so the ratio says what the coverage spectrum adds.

    python benchmarks/localize_bench.py                 # bugs suite, K = 1, 3, 5
    python benchmarks/localize_bench.py --per-bug       # each bug's rank and the suspects

Runs on the CPU in about a minute (one sandboxed pytest run per bug); not part of CI.
"""

from __future__ import annotations

import argparse
import sys
from statistics import mean


def ranks(task, run) -> dict:
    """One bug's faulty-line ranks under its spectrum `run` (None: the run reported nothing):
    Ochiai worst-case rank, reading-order rank, line count."""
    from tracetune.agents.localize import fault_lines, ochiai

    text = task.buggy.splitlines()
    nonblank = [n for n, line in enumerate(text, 1) if line.strip()]
    faults = fault_lines(task.buggy, task.reference)
    fault_nos = [n for n in nonblank if text[n - 1].strip() in faults]
    scores = ochiai(*run) if run is not None else {}
    best = max((scores.get(n, 0.0) for n in fault_nos), default=0.0)
    rank = (sum(scores.get(n, 0.0) >= best for n in nonblank) if best > 0 else len(nonblank))
    reading = min((nonblank.index(n) + 1 for n in fault_nos), default=len(nonblank))
    return {"id": task.id, "rank": rank, "reading": reading, "lines": len(nonblank),
            "score": best, "missed": best == 0, "faults": len(fault_nos)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="bugs")
    ap.add_argument("--train-pct", type=int, default=70, help="the split; held-out = the rest")
    ap.add_argument("--k", default="1,3,5", help="the localize=K values to report")
    ap.add_argument("--per-bug", action="store_true", help="print each bug's ranks")
    args = ap.parse_args()

    from tracetune.agents.localize import fault_lines, rank_suspects, spectrum
    from tracetune.sandbox import Sandbox
    from tracetune.tasks import load_suite
    from tracetune.tasks.splits import select

    tasks = [t for t in load_suite(args.suite).tasks if t.buggy and t.reference]
    held = {t.id for t in select(tasks, "test", args.train_pct)}
    ks = [int(k) for k in args.k.split(",")]
    rows, shown = [], {}
    with Sandbox() as sandbox:
        for task in tasks:
            run = spectrum(task.tests, task.buggy, sandbox, module=task.module)  # once a bug
            row = ranks(task, run)
            rows.append(row)
            faults = fault_lines(task.buggy, task.reference)
            for k in ks:
                found = [] if run is None else rank_suspects(*run, task.buggy, top=k)
                shown[(task.id, k)] = (len(found), any(s.text in faults for s in found))
            if args.per_bug:
                print(f"{row['id']:<28} rank {row['rank']:>2}/{row['lines']:<3} reading "
                      f"{row['reading']:>2} score {row['score']:.3f}")
    print(f"{args.suite}: {len(rows)} bugs ({len(held)} held-out), Ochiai over per-test line "
          "coverage; ties counted against the tool\n")
    print(f"{'':<10} {'bugs':>5} " + " ".join(f"{'acc@' + str(k):>8}" for k in (1, 3, 5))
          + f" {'EXAM':>6} {'missed':>6}")
    for name, subset in (("all", rows), ("held-out", [r for r in rows if r["id"] in held])):
        for label, key in (("Ochiai", "rank"), ("reading", "reading")):
            accs = [mean(r[key] <= k for r in subset) for k in (1, 3, 5)]
            exam = mean(r[key] / r["lines"] for r in subset)
            missed = sum(r["missed"] for r in subset) if key == "rank" else 0
            print(f"{name + ' ' + label:<18} {len(subset):>3} "
                  + " ".join(f"{100 * a:7.1f}%" for a in accs) + f" {exam:6.3f} {missed:6d}")
        ratio = (mean(r["reading"] / r["lines"] for r in subset)
                 / mean(r["rank"] / r["lines"] for r in subset))
        print(f"{'':<18} EXAM reading / Ochiai = {ratio:.2f}x")
    print()
    for k in ks:
        for name, ids in (("all", [r["id"] for r in rows]), ("held-out", sorted(held))):
            hits = [shown[(i, k)][1] for i in ids]
            sizes = [shown[(i, k)][0] for i in ids]
            print(f"localize={k:<2} {name:<9} faulty line in view {100 * mean(hits):5.1f}% "
                  f"({sum(hits)}/{len(hits)}), lines shown {mean(sizes):.1f} on average")
    return 0


if __name__ == "__main__":
    sys.exit(main())
