"""Random-weight models of real shapes, a word-level tokenizer and a learnable data set, built
on the spot with no download: what the GPU benchmarks and tests train and generate with.

Throughput depends on a model's shape, not on its weights, so a model of Qwen2.5-0.5B's shape
with random weights trains and generates at Qwen2.5-0.5B's speed. The tokenizer maps words
w0, w1, ... to one token each, as many as the model's vocabulary holds (plus chat-template
tokens), so a row's length in tokens is its word count and every generated token decodes to a
word. In each row the completion continues the prompt's last word with its successors
(w5 w6 w7 ...): a next-token rule a LoRA adapter learns within one epoch, so losses fall and
two trainings on the same data can be compared by their final loss.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = 1000
"""Words the rows use (w0..w999); the tokenizer knows as many as the model's vocabulary."""
SPECIALS = ("<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}")
TEMPLATE_TOKENS = 4
"""Tokens the chat template adds to a one-turn prompt and its answer."""

SHAPES = {
    # Qwen2.5-0.5B: 494M parameters (136M of them the tied embedding). Its dimensions in a
    # Llama config: transformers (5.x) gives a qwen2 checkpoint Qwen2's own byte-level
    # tokenizer whatever tokenizer it holds, which would cut this word-level data to a few
    # tokens a row. attention_bias puts Qwen2's q/k/v biases in (and a 896-wide o_proj bias).
    "qwen2.5-0.5b": ("llama", dict(attention_bias=True,
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    # SmolLM2-135M: 135M parameters (28M of them the tied embedding).
    "smollm2-135m": ("llama", dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)),
    # A CPU smoke shape: seconds per step on two cores.
    "tiny": ("llama", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1024, max_position_embeddings=2048,
        tie_word_embeddings=True)),
}


def make_tokenizer(vocab_size: int = len(SPECIALS) + WORDS):
    """A PreTrainedTokenizerFast of `vocab_size` tokens: the specials above, then one token per
    whitespace-separated word w0, w1, ...; the chat template above; eos <|end|>, pad <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": len(SPECIALS) + i for i in range(vocab_size - len(SPECIALS))})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                  eos_token="<|end|>", bos_token=None)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIALS[2:])})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model_dir(shape: str, path: Path, *, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """A checkpoint directory (config, random weights in `dtype`, tokenizer) of `shape`
    (a key of SHAPES). Returns `path`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kind, dims = SHAPES[shape]
    config = AutoConfig.for_model(kind, **dims, bos_token_id=None, eos_token_id=SPECIALS.index(
        "<|end|>"), pad_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    path = Path(path)
    model.save_pretrained(path)
    make_tokenizer(dims["vocab_size"]).save_pretrained(path)
    check_tokenizer(path)
    return path


def check_tokenizer(path: Path) -> None:
    """Raise RuntimeError unless the tokenizer AutoTokenizer loads from `path` gives a row
    exactly its words plus TEMPLATE_TOKENS tokens (a benchmark on mis-tokenized rows would
    measure nothing)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    row = make_rows(1, min_tokens=50, max_tokens=50, seed=0)[0]
    ids = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True,
                                  return_dict=True)["input_ids"]
    if len(ids) != 50:
        raise RuntimeError(f"{type(tok).__name__} from {path} gives {len(ids)} tokens for a "
                           "row of 50")


def make_rows(n: int, *, min_tokens: int = 99, max_tokens: int = 499,
              seed: int = 0) -> list[dict]:
    """`n` conversational prompt/completion rows (TRL's format, as `tracetune mine` writes
    them) of min_tokens..max_tokens tokens each with the chat template, uniformly drawn; the
    prompt takes 30-60% of a row."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        total = rng.randint(min_tokens, max_tokens) - TEMPLATE_TOKENS
        n_prompt = max(1, int(total * rng.uniform(0.3, 0.6)))
        prompt = [rng.randrange(WORDS) for _ in range(n_prompt)]
        answer = [(prompt[-1] + 1 + i) % WORDS for i in range(total - n_prompt)]
        rows.append({"prompt": [{"role": "user", "content": " ".join(f"w{w}" for w in prompt)}],
                     "completion": [{"role": "assistant",
                                     "content": " ".join(f"w{w}" for w in answer)}]})
    return rows


def write_dataset(rows: list[dict], path: Path) -> Path:
    """`rows` as a data set directory `tracetune train` reads (manifest + SFT rows)."""
    path = Path(path)
    (path / "formats").mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    (path / "formats" / "sft.prompt_completion.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    return path
