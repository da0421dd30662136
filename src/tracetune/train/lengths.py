"""Row lengths in tokens, measured the way the trainer tokenizes rows, and the rows that fit.

TRL's trainers cut a sequence longer than their `max_length`: the model is then trained on
answers cut mid-way (a function cut after its signature) and nothing says so. The recipe
measures every row here first, drops the rows over `max_seq_len` (and says how many), and
gives the trainer only rows that fit, with its own truncation off; `check_prepared` then
confirms on the trainer's tokenized rows that none is longer than the limit.

A row is as long as the longest sequence the trainer builds from it: prompt + completion for
SFT; prompt + chosen and prompt + rejected for a DPO pair (each is one forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass

from tracetune.errors import TracetuneError


def row_lengths(tokenizer, rows: list[dict]) -> list[int]:
    """Tokens of each row's longest sequence, as TRL's SFTTrainer / DPOTrainer tokenize it.

    Rows are TRL's prompt-completion ({"prompt", "completion"}) or preference ({"prompt",
    "chosen", "rejected"}) rows, either conversational (lists of messages, rendered by the
    tokenizer's own chat template with no generation prompt) or plain text (the EOS token TRL
    appends is counted). Returns one int per row. Raises TracetuneError (one line) for a row of
    neither shape."""
    from trl.data_utils import is_conversational

    lengths = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "prompt" not in row:
            raise TracetuneError(f"training row {i + 1} has no prompt")
        targets = [row[k] for k in ("completion", "chosen", "rejected") if k in row]
        if not targets:
            raise TracetuneError(f"training row {i + 1} has no completion, chosen or rejected")
        kind = list if is_conversational(row) else str
        if not all(isinstance(x, kind) for x in (row["prompt"], *targets)):
            raise TracetuneError(f"training row {i + 1}: prompt and answers must all be lists "
                                 "of messages or all text")
        if kind is list:
            ids = [tokenizer.apply_chat_template(row["prompt"] + t, tokenize=True,
                                                 return_dict=True)["input_ids"] for t in targets]
        else:
            eos = tokenizer.eos_token or ""
            ids = [tokenizer(text=row["prompt"] + t + ("" if t.endswith(eos) else eos))
                   ["input_ids"] for t in targets]
        lengths.append(max(len(x) for x in ids))
    return lengths


@dataclass(frozen=True)
class Fitted:
    """The rows that fit the limit and what was dropped."""

    rows: list[dict]
    """Rows of at most `limit` tokens, in their original order."""
    dropped: int
    """Rows longer than `limit` (left out)."""
    total: int
    """Rows measured."""
    limit: int
    """max_seq_len in tokens."""
    longest: int
    """Tokens of the longest row kept."""

    def summary(self) -> str:
        """One line: how many rows were dropped for length, and the limit."""
        return (f"dropped {self.dropped} of {self.total} rows longer than max_seq_len "
                f"{self.limit} tokens")


def fit_rows(rows: list[dict], lengths: list[int], limit: int) -> Fitted:
    """The rows whose length (tokens, from `row_lengths`) is at most `limit`. Raises
    TracetuneError (one line, naming the limit and the shortest and longest row) when no row
    fits: training on nothing is never what was asked."""
    kept = [(row, n) for row, n in zip(rows, lengths, strict=True) if n <= limit]
    if not kept:
        raise TracetuneError(f"no training row fits max_seq_len {limit} tokens: all "
                             f"{len(rows)} rows are longer ({min(lengths)} to {max(lengths)} "
                             "tokens with the chat template); raise max_seq_len or mine "
                             "shorter rows")
    return Fitted(rows=[row for row, _ in kept], dropped=len(rows) - len(kept),
                  total=len(rows), limit=limit, longest=max(n for _, n in kept))


def check_prepared(dataset, method: str, limit: int, expected_rows: int) -> None:
    """The trainer's tokenized train dataset (TRL's columns: input_ids for SFT; prompt_ids,
    chosen_ids, rejected_ids for DPO) holds `expected_rows` rows of at most `limit` tokens.
    Raises TracetuneError when it does not (the trainer tokenized differently from
    `row_lengths`): better no training than training on rows measured wrong."""
    if method == "sft":
        lengths = [len(ids) for ids in dataset["input_ids"]]
    else:
        lengths = [len(p) + max(len(c), len(r)) for p, c, r in
                   zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
    if len(lengths) != expected_rows or (lengths and max(lengths) > limit):
        raise TracetuneError(f"the trainer prepared {len(lengths)} rows of up to "
                             f"{max(lengths, default=0)} tokens where {expected_rows} rows of "
                             f"at most {limit} were measured; not training on rows it would "
                             "cut or drop")
