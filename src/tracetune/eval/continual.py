"""Continual-learning metrics over an accuracy matrix (seed 004), from stored per-task rows.

A stream of S sessions is consolidated K sessions at a time: round i (i = 1..R, R = ceil(S/K))
trains on sessions (i-1)K .. iK-1 and is then evaluated on every session; round 0 is the
zero-shot base model. a[i][j] is the success rate on session j after round i, shape (R+1, S).
Session j (0-based, stream order) is learned at round L(j) = ceil((j+1)/K) = j // K + 1, the
first round whose training data holds it. With K = 1 the layout is the usual (S+1) x S matrix
with L(j) = j + 1, whose "diagonal" (the just-learned cells) is a[j+1][j].

Every figure is recomputable from `MatrixRow`s (one JSON line each): `accuracy_matrix` builds
a, the metric functions are pure functions of (a, k), `bootstrap_ci` resamples tasks.

Where the sources differ in layout, each docstring gives the formula in this module's
indices and its K = 1 case. NaN means "no session qualifies" (e.g. backward transfer of a
one-session stream), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields

import numpy as np

from tracetune.errors import TracetuneError


@dataclass(frozen=True)
class MatrixRow:
    """One task's outcome in one cell of the accuracy matrix: the stored unit (one JSON line)."""

    stream: str
    """Name of the task stream."""
    ordering: str
    """Which ordering of the stream's sessions (seed 004's designs)."""
    strategy: str
    """Consolidation strategy (sequential, full_replay, ...)."""
    seed: int
    """Experiment seed."""
    round: int
    """Consolidation round the evaluated model comes from; 0 = the zero-shot base model."""
    session: int
    """0-based index of the task's session in this ordering's stream order."""
    task: str
    """Task id."""
    trials: int
    """Trials run of this task in this cell (> 0)."""
    passes: int
    """Trials that passed (0..trials)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MatrixRow:
        """The inverse of `to_dict`; keys other than the fields are ignored. Raises
        TracetuneError when a field is missing or not of its type."""
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise TracetuneError(f"matrix row lacks {', '.join(missing)}: {d}")
        try:
            return cls(stream=str(d["stream"]), ordering=str(d["ordering"]),
                       strategy=str(d["strategy"]), seed=int(d["seed"]), round=int(d["round"]),
                       session=int(d["session"]), task=str(d["task"]),
                       trials=int(d["trials"]), passes=int(d["passes"]))
        except (TypeError, ValueError) as e:
            raise TracetuneError(f"malformed matrix row ({e}): {d}") from None


def accuracy_matrix(rows: Iterable[MatrixRow]) -> np.ndarray:
    """a[i][j], shape (R+1, S): the mean over session j's tasks of each task's pass rate
    passes/trials after round i. Per-task mean first, then the mean over tasks, so every task
    weighs the same whatever its number of trials (the tasks, not the trials, are the sample;
    `bootstrap_ci` resamples them).

    R is the largest round and S the largest session + 1 among the rows. The rows must be of one
    (stream, ordering, strategy, seed) and hold every cell (round 0..R x session 0..S-1), each
    session with the same tasks in every round (so that a column's cells compare the same
    tasks), one row per (round, session, task), and 0 <= passes <= trials with trials > 0.
    Otherwise raises TracetuneError.
    """
    return np.stack([t.mean(axis=1) for t in _task_tables(list(rows))], axis=1)


def acc(a, k: int = 1) -> float:
    """Average accuracy after the last round, over all sessions (Lopez-Paz & Ranzato 2017,
    "Gradient Episodic Memory for Continual Learning" (GEM), sec. 2):
        ACC = (1/S) sum_j a[R][j]
    k only checks the matrix's shape."""
    a, r, _ = _check(a, k)
    return float(a[r].mean())


def bwt(a, k: int = 1) -> float:
    """Backward transfer (GEM, sec. 2): how the last round changed sessions learned earlier,
    measured from when each was learned. Over the sessions learned before the last round,
    Q = {j : L(j) < R}:
        BWT = (1/|Q|) sum_{j in Q} a[R][j] - a[L(j)][j]
    K = 1: (1/(S-1)) sum_{j=0..S-2} a[S][j] - a[j+1][j], GEM's (1/(T-1)) sum_{i<T} R_{T,i} -
    R_{i,i}. Negative is forgetting. NaN when Q is empty (one round: S <= K)."""
    a, r, learned = _check(a, k)
    q = np.flatnonzero(learned < r)
    if q.size == 0:
        return math.nan
    return float(np.mean(a[r, q] - a[learned[q], q]))


def forgetting(a, k: int = 1) -> float:
    """Average forgetting (Chaudhry, Dokania, Ajanthan & Torr 2018, "Riemannian Walk for
    Incremental Learning" (RWalk), sec. 4, the measure F_k at k = the last round): how far each
    session ends below its best accuracy since it was learned. "Learned before the last round"
    means L(j) < R (the sessions the last round did not train on for the first time), Q as in
    `bwt`:
        f_j = max_{l in [L(j), R-1]} a[l][j] - a[R][j]
        F   = (1/|Q|) sum_{j in Q} f_j
    K = 1: f_j = max_{l = j+1..S-1} a[l][j] - a[S][j] over j = 0..S-2. The maximum starts at the
    round that learned j (RWalk's runs over all earlier l, which in its setting are the rounds
    since learning); a zero-shot peak before training does not count as something forgotten.
    f_j < 0 (the session ended above every round since it was learned) is kept, not clipped.
    The maximum includes a[L(j)][j], so F >= -BWT always. Ties in the maximum are immaterial
    (the value is the same). NaN when Q is empty (one round: S <= K)."""
    a, r, learned = _check(a, k)
    q = np.flatnonzero(learned < r)
    if q.size == 0:
        return math.nan
    best = [a[learned[j]:r, j].max() for j in q]
    return float(np.mean(np.asarray(best) - a[r, q]))


def forward_transfer(a, k: int = 1) -> float:
    """Forward transfer (GEM, sec. 2; seed 004's FT): accuracy on a session just before it is
    trained on (after training through the sessions before it) minus its zero-shot accuracy,
    over the sessions that some earlier round could have helped, P = {j : L(j) >= 2}:
        FT = (1/|P|) sum_{j in P} a[L(j)-1][j] - a[0][j]
    K = 1: (1/(S-1)) sum_{j=1..S-1} a[j][j] - a[0][j]: row j is the model after training sessions
    0..j-1, column j the session it has not seen yet. This is GEM's (1/(T-1)) sum_{i=2..T}
    R_{i-1,i} - b_i with its 1-based tasks i = j + 1 and the zero-shot row a[0] in place of b
    (GEM's random-initialisation accuracies). In a 0-based "row t = after training session t"
    notation it reads R[t][t+1] - b[t+1], t = 0..S-2 (R[t] is this module's a[t+1]). NaN when P
    is empty (one round: S <= K)."""
    a, _, learned = _check(a, k)
    p = np.flatnonzero(learned >= 2)
    if p.size == 0:
        return math.nan
    return float(np.mean(a[learned[p] - 1, p] - a[0, p]))


def aulc(a, k: int = 1) -> float:
    """Area under the learning curve as SWE-Bench-CL computes it (Joshi, Chowdhury & Uysal 2025,
    arXiv 2507.00014; the authors' reference implementation, `calculate_aulc` in
    eval_v1/eval_procedure.py of github.com/thomasjoshi/agents-never-forget): the mean, over the
    first i = 1..S sessions of the stream, of the average just-learned accuracy of those i:
        d_j  = a[L(j)][j]                       (the paper's diagonal a_{j,j})
        AULC = (1/S) sum_{i=1..S} (1/i) sum_{j<i} d_j
    K = 1: d_j = a[j+1][j]. With K > 1 the curve still steps per session in stream order (the
    paper has one task per step); sessions of one round share their L(j).
    Checked against the reference code only: the paper's own text (its metrics section) was not
    available to us, so the paper's equation is not verified here. In the paper's agent setting
    the diagonal cell is the agent's attempt at a task with memory of the earlier ones; here it
    is the accuracy after consolidating on the session (the attempt before training on it is
    a[L(j)-1][j], which `forward_transfer` uses)."""
    a, _, learned = _check(a, k)
    d = a[learned, np.arange(a.shape[1])]                      # (S,)
    running = np.cumsum(d) / np.arange(1, d.size + 1)          # (S,) mean of d_0..d_{i-1}
    return float(running.mean())


def cl_plasticity(a, k: int = 1) -> float:
    """CL-Plasticity of SWE-Bench-CL (arXiv 2507.00014): the mean just-learned accuracy, the
    paper's diagonal a_{i,i}:
        CL-P = (1/S) sum_j a[L(j)][j]            K = 1: (1/S) sum_j a[j+1][j]
    Not verified against the paper's text (which was not available to us): taken from
    independent re-implementations that cite the paper, which agree on "mean of the diagonal".
    See `aulc` for what the diagonal means here versus in the paper's agent setting."""
    a, _, learned = _check(a, k)
    return float(a[learned, np.arange(a.shape[1])].mean())


def cl_stability(a, k: int = 1) -> float:
    """CL-Stability of SWE-Bench-CL (arXiv 2507.00014): one minus the average forgetting,
        CL-S = 1 - F                            (F: `forgetting`, Chaudhry et al. 2018)
    In [0, 2] (1 - F > 1 when sessions improved after their best earlier round). NaN when F is
    (one round). Not verified against the paper's text; from the same re-implementations as
    `cl_plasticity`."""
    return 1.0 - forgetting(a, k)


def cl_fbeta(a, k: int = 1, beta: float = 1.0) -> float:
    """CL-F-beta of SWE-Bench-CL (arXiv 2507.00014; the abstract names it as the score of the
    stability-plasticity trade-off): the F-beta combination (van Rijsbergen's weighted harmonic
    mean) of plasticity P = `cl_plasticity` and stability S = `cl_stability`,
        CL-F_beta = (1 + beta^2) P S / (beta^2 P + S)
    beta > 1 weighs stability more (F-beta's recall slot is S), beta = 1 is the harmonic mean
    (CL-F1). 0 when P = S = 0; NaN when S is (one round). The formula's form is not verified
    against the paper's text; taken from the same re-implementations as `cl_plasticity`."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    p, s = cl_plasticity(a, k), cl_stability(a, k)
    if math.isnan(s):
        return math.nan
    b2 = beta * beta
    den = b2 * p + s
    return 0.0 if den == 0 else float((1 + b2) * p * s / den)


def cl_metrics(a, k: int = 1) -> dict[str, float]:
    """Every metric of this module under its stable name (CL-F-beta with beta = 1)."""
    return {"acc": acc(a, k), "bwt": bwt(a, k), "forgetting": forgetting(a, k),
            "forward_transfer": forward_transfer(a, k), "aulc": aulc(a, k),
            "cl_plasticity": cl_plasticity(a, k), "cl_stability": cl_stability(a, k),
            "cl_f1": cl_fbeta(a, k, 1.0)}


def bootstrap_ci(rows: Iterable[MatrixRow], metric: Callable[[np.ndarray], float], *,
                 k: int = 1, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Metric of the accuracy matrix with a percentile bootstrap interval over tasks. Returns
    (point, low, high): point = metric(accuracy_matrix(rows)).

    Each of the n_boot resamples draws, independently in every session, as many tasks as the
    session has, with replacement (a stratified bootstrap: sessions keep their sizes, so each
    column of the matrix stays defined). A drawn task brings its whole row across all rounds,
    so every resampled matrix is paired across rounds like the real one (a task's zero-shot and
    later accuracies move together). The matrix is rebuilt (per-task means, then the mean over
    the drawn tasks, as `accuracy_matrix`) and the metric taken; resamples where it is NaN are
    dropped, and low, high are the (1-level)/2 and (1+level)/2 quantiles (numpy's linear
    interpolation) of the rest. All resamples NaN (the metric is undefined for this shape, as
    forgetting with one round) gives NaN ends. Data where every task of a session has the same
    pass rates gives a zero-width interval: resampling tasks cannot see trial-level noise, and
    with few tasks per session the interval is too narrow (see stats.paired_bootstrap_ci).

    Seeded with numpy's Generator(PCG64(seed)): the same rows and seed give the same interval.
    k is checked against the matrix's shape (it is the metric's own k that defines it).
    Raises TracetuneError for rows `accuracy_matrix` rejects, ValueError for n_boot < 1 or a
    level outside (0, 1).
    """
    # scipy.stats.bootstrap resamples several samples independently (paired=False), which is
    # this stratified design, but it rejects a session of one task ("two or more observations")
    # and turns the whole interval NaN when any resample's statistic is NaN; dropping those is
    # what we need, so the resampling is written here.
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tables = _task_tables(list(rows))                          # S arrays, each (R+1, n_j)
    a = np.stack([t.mean(axis=1) for t in tables], axis=1)     # (R+1, S)
    _check(a, k)
    point = float(metric(a))
    rng = np.random.Generator(np.random.PCG64(seed))
    boot = np.empty((n_boot,) + a.shape)                       # (B, R+1, S)
    for j, t in enumerate(tables):
        idx = rng.integers(0, t.shape[1], size=(n_boot, t.shape[1]))   # (B, n_j)
        boot[:, :, j] = t[:, idx].mean(axis=2).T               # (R+1, B, n_j) -> (B, R+1)
    values = np.array([metric(m) for m in boot], dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return point, math.nan, math.nan
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return point, float(low), float(high)


def _check(a, k: int) -> tuple[np.ndarray, int, np.ndarray]:
    """(a as floats, R, L) with L[j] = j // k + 1 the round that learned session j; raises
    TracetuneError unless a is (R+1, S) with R = ceil(S/k), S >= 1, values in [0, 1]."""
    a = np.asarray(a, dtype=float)
    if k < 1:
        raise TracetuneError(f"sessions per round must be >= 1, got {k}")
    if a.ndim != 2 or a.shape[1] < 1:
        raise TracetuneError(f"an accuracy matrix is (rounds + 1, sessions), got shape {a.shape}")
    s = a.shape[1]
    r = math.ceil(s / k)
    if a.shape[0] != r + 1:
        raise TracetuneError(f"{s} sessions at {k} per round need {r} rounds + the zero-shot "
                             f"row, but the matrix has {a.shape[0]} rows")
    if np.isnan(a).any() or (a < 0).any() or (a > 1).any():
        raise TracetuneError("accuracy matrix values must be in [0, 1]")
    return a, r, np.arange(s) // k + 1


def _task_tables(rows: list[MatrixRow]) -> list[np.ndarray]:
    """Per session j, its tasks' pass rates by round, shape (R+1, n_j), tasks in sorted id
    order; validates the rows as `accuracy_matrix` documents."""
    if not rows:
        raise TracetuneError("no matrix rows")
    runs = sorted({(r.stream, r.ordering, r.strategy, r.seed) for r in rows})
    if len(runs) > 1:
        shown = "; ".join(f"stream={s} ordering={o} strategy={g} seed={e}"
                          for s, o, g, e in runs[:3])
        raise TracetuneError(f"matrix rows mix {len(runs)} runs ({shown}"
                             f"{'; ...' if len(runs) > 3 else ''}); filter to one first")
    rate: dict[tuple[int, int, str], float] = {}
    for r in rows:
        if r.trials <= 0 or not 0 <= r.passes <= r.trials:
            raise TracetuneError(f"matrix row needs trials > 0 and 0 <= passes <= trials, got "
                                 f"{r.passes}/{r.trials} (round {r.round}, session {r.session},"
                                 f" task {r.task})")
        if r.round < 0 or r.session < 0:
            raise TracetuneError(f"negative round or session in matrix row: {r}")
        key = (r.round, r.session, r.task)
        if key in rate:
            raise TracetuneError(f"two matrix rows for round {r.round}, session {r.session}, "
                                 f"task {r.task}")
        rate[key] = r.passes / r.trials
    n_rounds = max(i for i, _, _ in rate) + 1
    n_sessions = max(j for _, j, _ in rate) + 1
    tasks: dict[tuple[int, int], set[str]] = {}
    for i, j, t in rate:
        tasks.setdefault((i, j), set()).add(t)
    missing = [(i, j) for i in range(n_rounds) for j in range(n_sessions) if (i, j) not in tasks]
    if missing:
        i, j = missing[0]
        more = f" (and {len(missing) - 1} more cells)" if len(missing) > 1 else ""
        raise TracetuneError(f"accuracy matrix cell (round {i}, session {j}) has no rows{more}")
    tables = []
    for j in range(n_sessions):
        ids = sorted(tasks[(0, j)])
        for i in range(1, n_rounds):
            if tasks[(i, j)] != tasks[(0, j)]:
                diff = sorted(tasks[(i, j)] ^ tasks[(0, j)])
                raise TracetuneError(f"session {j} has other tasks in round {i} than in round 0 "
                                     f"({', '.join(diff[:3])}{', ...' if len(diff) > 3 else ''})")
        tables.append(np.array([[rate[(i, j, t)] for t in ids] for i in range(n_rounds)]))
    return tables
