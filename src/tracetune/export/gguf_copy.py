"""Rewrite a GGUF model with full-precision tensors, optionally adding a LoRA delta to them.

Used two ways: a float32 copy of a quantized base, against which a GGUF LoRA adapter's parity with
transformers + PEFT is exact up to float rounding (both sides then multiply the same numbers); and
`merged-gguf` export, where each adapted matrix gets W + scale * B @ A (rows of q/k in llama.cpp's
order). Metadata (architecture, tokenizer, chat template) is copied unchanged.

`copies` adds tensors: a merged model whose base ties its output matrix to the token embeddings
(no `output.weight` in the GGUF) gets an untied `output.weight` = token_embd + the output's delta;
llama.cpp uses an `output.weight` when one is present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

Delta = Callable[[str, tuple[int, ...]], "np.ndarray | None"]
"""GGUF tensor name, numpy shape -> array to add (same shape), or None."""


def rewrite_gguf(src: Path, dst: Path, *, dtype=np.float32, delta: Delta | None = None,
                 copies: dict[str, str] | None = None) -> int:
    """Copy `src` to `dst` with every tensor dequantized to `dtype` (+ delta); returns how many
    tensors received a delta. `copies` maps a new tensor name to the `src` tensor it starts
    from (written after the others, + its own delta). Raises KeyError for a copy of a tensor
    `src` does not hold."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # the writer sets these itself
        if field.name == "general.file_type":
            continue  # no longer describes the tensors
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    by_name = {t.name: t for t in reader.tensors}
    new = [(name, by_name[source]) for name, source in (copies or {}).items()]
    changed = 0
    for name, t in [(t.name, t) for t in reader.tensors] + new:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)  # numpy (rows, cols)
        if delta is not None:
            d = delta(name, w.shape)
            if d is not None:
                w = w + d
                changed += 1
        # 1-D tensors (norms) stay float32: llama.cpp expects them so.
        writer.add_tensor(name, np.ascontiguousarray(w.astype(dtype if w.ndim > 1 else np.float32)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return changed
