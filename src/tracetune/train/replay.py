"""Partial replay (seed 004, experiment 2): a fixed-size buffer of past training examples that,
when full, evicts the lowest-priority ones, and the mix of each round's new rows with a sample of
it at a stated new:replay ratio.

An `Example` is one SFT row (the canonical row dict of tracetune.datasets.rows, or a TRL
prompt-completion / messages row: chat messages whose completion is the assistant turn) with
where it came from. The buffer's priorities, each deciding which examples a full buffer keeps:

    recency     the newest: highest round, then session, then the later added
    difficulty  the highest loss under the current model (`row_losses`, passed to `add`);
                ties: newer
    diversity   the subset that covers the examples' TF-IDF space best (greedy k-center from
                the smallest key, `k_center`)
    confidence  the highest confidence (the task's pass rate, or a tier score); ties: newer

`to_json` / `from_json` carry the whole buffer, insertion order included, so that a resumed
run continues with the very buffer it stopped with.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tracetune.errors import TracetuneError

PRIORITIES = ("recency", "difficulty", "diversity", "confidence")
JSON_VERSION = 1
"""Version of `ReplayBuffer.to_json`'s format."""


def example_key(row: dict) -> str:
    """A row's stable id: sha256 (hex) of its canonical JSON, `json.dumps(row, sort_keys=True)`
    (the digest tracetune.experiment's row keys use as well)."""
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()


def conversation(row: dict) -> tuple[list[dict], list[dict]]:
    """(prompt messages, completion messages) of an SFT row: a canonical row or TRL
    prompt-completion row ({"prompt": [...], "completion": {...} or [...]}), or a messages row
    ({"messages": [...]}, its last message the assistant's completion). Raises TracetuneError
    (one line) for a row of neither shape or of plain text."""
    if isinstance(row, dict) and "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        completion = [completion] if isinstance(completion, dict) else completion
    elif isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"]:
        prompt, completion = row["messages"][:-1], row["messages"][-1:]
    else:
        raise TracetuneError("a replay row needs prompt and completion, or messages")
    for part, messages in (("prompt", prompt), ("completion", completion)):
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) and "role" in m and "content" in m
                        for m in messages)):
            raise TracetuneError(f"a replay row's {part} must be a non-empty list of chat "
                                 "messages ({\"role\", \"content\"})")
    if any(m["role"] != "assistant" for m in completion):
        raise TracetuneError("a replay row's completion must be the assistant's turn")
    return prompt, completion


@dataclass(frozen=True)
class Example:
    """One training row in the replay buffer, and where it came from. Raises TracetuneError
    (one line) for a row that is not an SFT chat row (`conversation`) or not JSON, a session
    or round that is not a whole number >= 0, or a confidence outside [0, 1]."""

    row: dict
    """The SFT row exactly as it is written for training (a copy: later changes to the
    caller's dict do not reach the buffer)."""
    task: str
    """Task id the row teaches."""
    session: int
    """Stream position of the session the row came from (0-based)."""
    round: int
    """The consolidation round that added it."""
    confidence: float
    """In [0, 1]: the pass rate of the row's task, or a tier score (the caller's choice)."""
    key: str = field(init=False)
    """`example_key(row)`: duplicates share it."""

    def __post_init__(self) -> None:
        try:
            row = json.loads(json.dumps(self.row))  # a copy, and proof it serializes
        except (TypeError, ValueError) as exc:
            raise TracetuneError(f"replay row of task {self.task}: not JSON ({exc})") from None
        conversation(row)
        for name in ("session", "round"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise TracetuneError(f"replay row of task {self.task}: {name} {value!r} is not "
                                     "a whole number >= 0")
        if not (isinstance(self.confidence, (int, float)) and 0 <= self.confidence <= 1):
            raise TracetuneError(f"replay row of task {self.task}: confidence "
                                 f"{self.confidence!r} is not within [0, 1]")
        object.__setattr__(self, "row", row)
        object.__setattr__(self, "confidence", float(self.confidence))
        object.__setattr__(self, "key", example_key(row))

    def __hash__(self) -> int:  # the row is a dict: hash by the key equal examples share
        return hash(self.key)

    @classmethod
    def of(cls, row: dict, *, task: str, session: int, round: int,
           confidence: float) -> Example:
        """The example of `row` (the constructor, with its settings named)."""
        return cls(row, task, session, round, confidence)

    @property
    def text(self) -> str:
        """The prompt and completion messages' contents, one after the other (what the
        diversity priority compares)."""
        prompt, completion = conversation(self.row)
        return "\n".join(str(m["content"]) for m in prompt + completion)


class ReplayBuffer:
    """At most `size` examples; `priority` (one of PRIORITIES, module docstring) decides which
    ones a full buffer keeps. `seed` goes into every `sample` drawn from it. Raises
    TracetuneError for a size below 1 or an unknown priority."""

    def __init__(self, size: int, priority: str, seed: int = 0) -> None:
        if not isinstance(size, int) or size < 1:
            raise TracetuneError(f"replay buffer size must be a whole number of at least 1, "
                                 f"not {size!r}")
        if priority not in PRIORITIES:
            raise TracetuneError(f"unknown replay priority {priority!r} (valid: "
                                 f"{', '.join(PRIORITIES)})")
        self.size = size
        self.priority = priority
        self.seed = seed
        self._held: dict[str, tuple[int, Example]] = {}  # key -> (insertion number, example)
        self._added = 0  # insertion numbers handed out so far

    def __len__(self) -> int:
        return len(self._held)

    @property
    def examples(self) -> tuple[Example, ...]:
        """The held examples, oldest insertion first (a re-added duplicate counts as new)."""
        return tuple(e for _, e in sorted(self._held.values(), key=lambda x: x[0]))

    def add(self, examples: Iterable[Example], *,
            losses: dict[str, float] | None = None) -> list[Example]:
        """Add `examples` (in order), then evict down to `size` by the priority; returns the
        evicted examples, oldest insertion first. An example whose key is already held replaces
        the older copy (it takes the new copy's round, session, confidence and insertion
        place); the replaced copy is not reported as evicted.

        `losses` (key -> loss in nats/token under the current model, `row_losses`) is required
        by the difficulty priority for every held and every added example, whether or not the
        buffer overflows (a missing loss shows in the first round, not when the buffer fills);
        the other priorities ignore it. Raises TracetuneError for missing or non-finite
        losses; nothing is added then."""
        pool = dict(self._held)
        added = self._added
        for e in examples:
            if not isinstance(e, Example):
                raise TypeError(f"ReplayBuffer.add takes Examples, not {type(e).__name__}")
            pool.pop(e.key, None)  # re-inserted at the end: insertion order is recency's last key
            pool[e.key] = (added, e)
            added += 1
        if self.priority == "difficulty":
            _check_losses(pool, losses)
        keep = set(pool) if len(pool) <= self.size else self._survivors(pool, losses)
        self._held = {k: v for k, v in pool.items() if k in keep}
        self._added = added
        return [e for _, e in sorted((v for k, v in pool.items() if k not in keep),
                                     key=lambda x: x[0])]

    def _survivors(self, pool: dict[str, tuple[int, Example]],
                   losses: dict[str, float] | None) -> set[str]:
        """The keys of the `size` examples of `pool` the priority keeps."""
        def newer(item):  # (round, session, insertion): larger is newer
            n, e = item
            return (e.round, e.session, n)

        items = list(pool.values())
        if self.priority == "recency":
            ranked = sorted(items, key=newer, reverse=True)
        elif self.priority == "difficulty":
            ranked = sorted(items, key=lambda x: (losses[x[1].key], *newer(x)), reverse=True)
        elif self.priority == "confidence":
            ranked = sorted(items, key=lambda x: (x[1].confidence, *newer(x)), reverse=True)
        else:
            return set(k_center([e for _, e in items], self.size))
        return {e.key for _, e in ranked[:self.size]}

    def sample(self, n: int, *, seed: int) -> list[Example]:
        """`n` held examples drawn without replacement (all of them when `n` >= len), in the
        buffer's order; the draw depends only on the held examples, `seed` and the buffer's
        seed. Raises TracetuneError for a negative `n`."""
        return _draw(list(self.examples), n, f"{self.seed}/{seed}")

    def to_json(self) -> str:
        """The whole buffer as one JSON document (`from_json` restores it exactly)."""
        held = sorted(self._held.values(), key=lambda x: x[0])
        return json.dumps({
            "version": JSON_VERSION, "size": self.size, "priority": self.priority,
            "seed": self.seed, "added": self._added,
            "examples": [{"order": n, "key": e.key, "task": e.task, "session": e.session,
                          "round": e.round, "confidence": e.confidence, "row": e.row}
                         for n, e in held]}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReplayBuffer:
        """The buffer `to_json` wrote. Raises TracetuneError (one line) for text that is not
        such a document, of another version, or whose rows no longer match their keys."""
        try:
            doc = json.loads(text)
            if doc.get("version") != JSON_VERSION:
                raise TracetuneError(f"replay buffer JSON of version {doc.get('version')!r}, "
                                     f"not {JSON_VERSION}")
            buffer = cls(doc["size"], doc["priority"], seed=doc["seed"])
            for item in doc["examples"]:
                e = Example(item["row"], item["task"], item["session"], item["round"],
                            item["confidence"])
                if e.key != item["key"]:
                    raise TracetuneError(f"replay buffer JSON: the row of task {e.task} does "
                                         "not match its key (edited or damaged)")
                buffer._held[e.key] = (item["order"], e)
            buffer._added = doc["added"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TracetuneError(f"not a replay buffer's JSON: {exc}") from None
        if len(buffer) > buffer.size:
            raise TracetuneError(f"replay buffer JSON holds {len(buffer)} examples, more than "
                                 f"its size {buffer.size}")
        return buffer


def k_center(examples: list[Example], k: int) -> list[str]:
    """The keys of `k` examples chosen by greedy farthest-point (k-center) selection on the
    cosine distance between TF-IDF vectors of their `text`.

    Rule: candidates in key order; the first is the smallest key; each next one is the example
    farthest from all chosen so far (the largest minimum distance), ties to the smallest key.
    So the same examples give the same choice whatever order they were added in.

    Why this algorithm: k-center asks for the k members that leave no example far from a kept
    one, which is what "covers the space" means; the greedy choice is within a factor 2 of the
    best cover (Gonzalez 1985), takes one sparse product per pick (O(n k), no n x n matrix),
    needs no random start (k-means does, and returns centroids rather than examples), and
    keeps one member of every near-duplicate cluster before a second of any. scikit-learn has
    TF-IDF but no k-center, hence the dozen lines below."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    ordered = sorted(examples, key=lambda e: e.key)
    if k >= len(ordered):
        return [e.key for e in ordered]
    try:
        vectors = TfidfVectorizer().fit_transform([e.text for e in ordered])  # (n, vocab) L2
    except ValueError:  # no word in any text: every pair is as far apart as can be
        vectors = None

    def distances(i: int):  # (n,) cosine distance of every example to example i
        if vectors is None:
            return np.ones(len(ordered))
        return 1.0 - (vectors @ vectors[i].T).toarray().ravel()

    chosen = [0]
    nearest = distances(0)  # (n,) distance to the nearest chosen example
    nearest[0] = -np.inf
    while len(chosen) < k:
        i = int(np.argmax(nearest))  # the first maximum: the smallest key among ties
        chosen.append(i)
        nearest = np.minimum(nearest, distances(i))
        nearest[chosen] = -np.inf
    return [ordered[i].key for i in chosen]


def parse_ratio(ratio: str) -> tuple[int, int]:
    """(new, replay) of a "new:replay" ratio like "1:1", "2:1" or "1:0": whole numbers, new at
    least 1. Raises TracetuneError (one line) for anything else."""
    found = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", ratio) if isinstance(ratio, str) else None
    if found is None or int(found[1]) < 1:
        raise TracetuneError(f"ratio {ratio!r}: write new:replay as two whole numbers, new at "
                             "least 1, like \"1:1\", \"2:1\" or \"1:0\"")
    return int(found[1]), int(found[2])


def mix(new: list[Example], replay: ReplayBuffer, ratio: str, seed: int) -> list[dict]:
    """A round's training rows: every new example's row plus round(len(new) * r / n) rows
    sampled from `replay` (ratio "n:r", rounded half up), shuffled by `seed` (in their given
    order when no row is replayed, e.g. at the first round, so that round trains what
    continuing on the new rows alone trains).

    The replay part is smaller when the buffer holds fewer examples than that (all of them are
    taken then): e.g. at the first round, with an empty buffer, the rows are the new ones only.
    Examples of the buffer with the key of a new one are not replayed (the row would count
    twice). Rows are copies. Raises TracetuneError for a bad ratio."""
    n, r = parse_ratio(ratio)
    wanted = (2 * len(new) * r + n) // (2 * n)  # round half up, in whole numbers
    fresh = {e.key for e in new}
    candidates = [e for e in replay.examples if e.key not in fresh]
    replayed = _draw(candidates, wanted, f"{replay.seed}/{seed}")
    rows = [copy.deepcopy(e.row) for e in [*new, *replayed]]
    if replayed:  # with nothing replayed the new rows keep their order: what sequential trains
        random.Random(f"mix/{seed}").shuffle(rows)
    return rows


def _draw(examples: list[Example], n: int, seed: str) -> list[Example]:
    """`n` of `examples` without replacement (all when n >= len), in their given order."""
    if not isinstance(n, int) or n < 0:
        raise TracetuneError(f"cannot sample {n!r} examples: a whole number >= 0")
    if n >= len(examples):
        return list(examples)
    picked = set(random.Random(seed).sample(range(len(examples)), n))
    return [e for i, e in enumerate(examples) if i in picked]


def _check_losses(pool: dict[str, tuple[int, Example]], losses: dict[str, float] | None) -> None:
    missing = [e for _, e in pool.values() if losses is None or e.key not in losses]
    if missing:
        raise TracetuneError(f"the difficulty priority needs the loss of every example: "
                             f"{len(missing)} of {len(pool)} have none (first: task "
                             f"{missing[0].task}, key {missing[0].key[:12]})")
    bad = [k for k in pool if not isinstance(losses[k], (int, float)) or
           not math.isfinite(losses[k])]
    if bad:
        raise TracetuneError(f"the difficulty priority needs finite losses: {len(bad)} are not "
                             f"(first: key {bad[0][:12]}, {losses[bad[0]]!r})")


def row_losses(adapter_dir: Path | None, base: str, rows: list[dict], *,
               max_seq_len: int = 1024, batch_size: int = 4) -> list[float]:
    """The mean cross-entropy (nats/token) of each row's completion tokens under `base` (+ the
    PEFT adapter in `adapter_dir`), in row order: the difficulty priority's score.

    Rows are tokenized as TRL's SFTTrainer tokenizes them for the recipe (train.recipe):
    the prompt with the tokenizer's chat template and its generation prompt, prompt +
    completion without; the completion is every token after their common prefix (the
    assistant turn and its end-of-turn token), the only tokens the training loss counts. A row
    longer than `max_seq_len` tokens is scored on its first `max_seq_len` (training drops such
    rows; the buffer may still hold one). Loads the model as the recipe does (`hf_source`,
    `weight_options`): on the CPU in float32 unless the base spec sets device= / dtype=.
    Memory: one (batch_size, longest row, vocabulary) float32 logits tensor at a time.

    Raises TracetuneError (one line) for a bad base spec (or one that stacks an adapter: pass
    it as `adapter_dir`), an adapter that does not load on it, a row that is not an SFT chat
    row, or one whose prompt alone fills `max_seq_len`."""
    if max_seq_len < 2 or batch_size < 1:
        raise TracetuneError(f"row_losses: max_seq_len {max_seq_len} must be at least 2 and "
                             f"batch_size {batch_size} at least 1")
    if not rows:
        return []
    from tracetune.models.hf import check_reachable
    from tracetune.models.resolve import hf_source, weight_options

    opts = weight_options(base)
    if opts.adapter or opts.lora:
        raise TracetuneError(f"base model {base!r}: drop adapter= / lora= and pass the PEFT "
                             "adapter directory as the adapter to score with")
    if adapter_dir is not None and not Path(adapter_dir).is_dir():
        raise TracetuneError(f"adapter directory not found: {adapter_dir}")
    source = hf_source(base)
    check_reachable(source)

    import torch
    import transformers
    from trl.data_utils import common_prefix_length

    device = "cpu" if opts.device == "auto" else opts.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TracetuneError(f"base model {base!r}: device={device} but torch sees no CUDA "
                             "device")
    dtype = (torch.float32 if device == "cpu" else torch.bfloat16) if opts.dtype == "auto" \
        else getattr(torch, opts.dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        source, trust_remote_code=opts.trust_remote_code)

    sequences = []  # per row: (token ids, index of the first completion token)
    for i, row in enumerate(rows):
        try:
            prompt, completion = conversation(row)
        except TracetuneError as exc:
            raise TracetuneError(f"row {i + 1}: {exc}") from None
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                   tokenize=True, return_dict=True)["input_ids"]
        ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True,
                                            return_dict=True)["input_ids"]
        start = common_prefix_length(prompt_ids, ids)
        if max(start, 1) >= min(len(ids), max_seq_len):  # token 0 is never predicted
            raise TracetuneError(f"row {i + 1}: its prompt is {start} tokens, which leaves no "
                                 f"completion token within max_seq_len {max_seq_len}")
        sequences.append((ids[:max_seq_len], start))

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=opts.trust_remote_code)
    except OSError as exc:
        raise TracetuneError(f"cannot load base model {base!r}: {exc}") from exc
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()),
                         type(exc).__name__)
            raise TracetuneError(f"adapter {adapter_dir} does not fit {base}: {first}") from exc
    model = model.to(device).eval()

    losses = [0.0] * len(rows)
    # Rows of similar length batched together: less padding.
    order = sorted(range(len(rows)), key=lambda i: len(sequences[i][0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            batch = order[b:b + batch_size]
            longest = max(len(sequences[i][0]) for i in batch)
            ids = torch.full((len(batch), longest), pad, dtype=torch.long)  # (B, T), right-padded
            labels = torch.full((len(batch), longest), -100, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)  # (B, T)
            for j, i in enumerate(batch):
                seq, start = sequences[i]
                ids[j, :len(seq)] = torch.tensor(seq)
                labels[j, start:len(seq)] = torch.tensor(seq[start:])
                mask[j, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            # Token t predicts token t + 1: logits (B, T-1, V) against labels (B, T-1).
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels[:, 1:].to(device),
                ignore_index=-100, reduction="none")  # (B, T-1), 0 where ignored
            counted = (labels[:, 1:] != -100).sum(dim=1)  # (B,)
            for j, i in enumerate(batch):
                losses[i] = float(nll[j].sum().cpu() / counted[j])
    return losses
