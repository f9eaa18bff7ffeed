"""Scoring the first assistant token: log p(token | chat prompt) for a few candidate tokens per prompt
(MMLU's answer letters, a model judge's yes/no). One forward per left-padded batch, no decoding; the prompt
encoding, padding and batching are :mod:`sstm.generate`'s."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sstm.errors import SSTMError
from sstm.generate import _batches, _device, encode_prompts, eos_ids, left_pad, pad_id


def letter_ids(tok, letters: Sequence[str]) -> list[int]:
    """The single token id of each answer letter as the first assistant token (no leading space)."""
    ids = []
    for letter in letters:
        enc = tok(letter, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise SSTMError(f"answer letter {letter!r} is not a single token for this tokenizer")
        ids.append(enc[0])
    if len(set(ids)) != len(ids):
        raise SSTMError("answer letters map to the same token for this tokenizer")
    return ids


@torch.inference_mode()
def next_token_logprobs(
    model,
    tok,
    messages: Sequence[str],
    token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    advance: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """log p(token | chat prompt) for each message (rows) and each of `token_ids` (columns).

    log p = log_softmax over the whole vocabulary of the logits at the last prompt
    position, i.e. the first token of the assistant's turn.
    """
    prompts = encode_prompts(tok, messages)
    pad = pad_id(tok, eos_ids(model, tok))
    device = _device(model)
    cols = torch.tensor(list(token_ids), dtype=torch.long)
    out = torch.empty(len(prompts), len(cols), dtype=torch.float32)
    for idx in _batches([len(p) for p in prompts], batch_size):
        ids, mask = left_pad([prompts[i] for i in idx], pad)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device), logits_to_keep=1
        ).logits[:, -1, :]
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        out[idx] = logp[:, cols]
        if advance is not None:
            advance(len(idx))
    return out
