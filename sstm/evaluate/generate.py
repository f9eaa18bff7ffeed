"""Batched, left-padded greedy generation and answer-letter scoring with the chat template.

Prompts are rendered with the model's chat template (one user turn + the assistant
generation prompt), tokenized without extra special tokens (the template already
holds them), and left-padded so every row's last prompt token sits in the same
column. ``generate`` then computes position ids from the attention mask, so padding
changes neither positions nor attention: a batched greedy run gives the same text
as one prompt at a time (up to float rounding).

Prompts are processed longest first, which keeps the padding per batch small and
shows an out-of-memory error on the first batch rather than the last.

Prefill without padding: prompt lengths vary a lot (a jailbreak template can be
2,000 tokens, a benign question 20), and a padded batch would pay the longest
prompt's prefill for every row. So each prompt except its last token is run through
the model alone (cost = its own length), the per-prompt key/value caches are
left-padded with zeros into one batch cache, and ``generate`` continues from that
cache: it feeds only the last prompt token, with the attention mask hiding the
padded cache slots and position ids from the mask. This is exact (the same keys,
values and positions as an unpadded run); it is used for models whose cache is a
plain ``DynamicCache`` (Llama-style full attention), others get a padded prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from sstm.data.chat import render_prompt
from sstm.errors import SSTMError


@dataclass(frozen=True)
class Generation:
    text: str  # decoded new tokens before the first end-of-turn token, stripped
    n_tokens: int  # new tokens generated, the end-of-turn token included when reached
    finished: bool = True  # False: cut off by max_new_tokens before an end-of-turn token


def eos_ids(model, tok) -> list[int]:
    """Every token id that ends a turn: the tokenizer's eos plus the model's generation eos ids."""
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    if not ids:
        raise SSTMError("the tokenizer has no end-of-sequence token: generation could not stop")
    return sorted(ids)


def pad_id(tok, eos: Sequence[int]) -> int:
    return int(tok.pad_token_id) if tok.pad_token_id is not None else int(eos[0])


def encode_prompts(tok, messages: Sequence[str]) -> list[list[int]]:
    """Token ids of each user message rendered as chat prompt + assistant generation prompt."""
    return [tok(render_prompt(tok, m), add_special_tokens=False)["input_ids"] for m in messages]


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padding on the left so sequences end in the same column."""
    width = max(len(s) for s in seqs)
    ids = [[pad] * (width - len(s)) + list(s) for s in seqs]
    mask = [[0] * (width - len(s)) + [1] * len(s) for s in seqs]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def _prefilled_cache(model, prompts: Sequence[Sequence[int]], width: int, device):
    """A batch KV cache of `prompts` minus their last token, each prefilled alone and left-padded to width-1.

    None when a prompt has fewer than 2 tokens or the model's cache is not made of plain
    full-attention `DynamicLayer`s (sliding windows etc. would not survive the padding).
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if min(len(p) for p in prompts) < 2:
        return None
    caches = []
    for p in prompts:
        out = model(input_ids=torch.tensor([list(p[:-1])], device=device), use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None)
        if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        caches.append(cache)

    def padded(tensors: list[torch.Tensor]) -> torch.Tensor:  # [1, heads, len, dim] each -> [B, heads, width-1, dim]
        return torch.cat([torch.nn.functional.pad(t, (0, 0, width - 1 - t.shape[-2], 0)) for t in tensors])

    layers = [
        (padded([c.layers[i].keys for c in caches]), padded([c.layers[i].values for c in caches]))
        for i in range(len(caches[0].layers))
    ]
    return DynamicCache(layers)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    if batch_size < 1:
        raise SSTMError(f"--batch-size {batch_size}: must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def generate(
    model,
    tok,
    messages: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    advance: Callable[[int], None] | None = None,
    prefill_alone: bool = True,
) -> list[Generation]:
    """Greedy completions of `messages` (user turns), in input order, decoding only new tokens."""
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise SSTMError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    prompts = encode_prompts(tok, messages)
    eos = eos_ids(model, tok)
    pad = pad_id(tok, eos)
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad
    )
    device = _device(model)
    out: list[Generation | None] = [None] * len(prompts)
    for idx in _batches([len(p) for p in prompts], batch_size):
        ids, mask = left_pad([prompts[i] for i in idx], pad)
        cache = _prefilled_cache(model, [prompts[i] for i in idx], ids.shape[1], device) if prefill_alone else None
        extra = {"cache": cache} if cache is not None else {}
        seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                              **extra)
        for i, new in zip(idx, seqs[:, ids.shape[1] :].tolist()):
            stop = next((j for j, t in enumerate(new) if t in eos), None)
            kept = new if stop is None else new[:stop]
            n = len(new) if stop is None else stop + 1
            out[i] = Generation(tok.decode(kept, skip_special_tokens=True).strip(), n, stop is not None)
        if advance is not None:
            advance(len(idx))
    return out  # type: ignore[return-value]


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
