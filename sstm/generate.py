"""Greedy generation with the chat template, decoded in slots; answer-letter scoring.

Prompts are rendered with the model's chat template (one user turn + the assistant
generation prompt) and tokenized without extra special tokens (the template already
holds them). Prompts are taken longest first, which shows an out-of-memory error on
the first rows rather than the last.

Decoding in slots (models whose cache is a plain ``DynamicCache``, i.e. Llama-style
full attention). Each prompt except its last token is prefilled (see shared prefixes and
groups below), and its keys and values are written, right-aligned, into a free slot of one
batch cache: a buffer of
shape [slots, heads, width + room, dim] where every slot's cache ends in the same
column. Each step feeds every slot its next token with its own position id (number
of tokens before it) and an attention mask that hides the columns left of the slot's
start, so a row sees exactly the keys, values and positions of an unpadded run.
A row leaves its slot at its first end-of-turn token or at ``max_new_tokens``, and
the next waiting prompt takes the slot, so the batch stays full; once no prompt is
waiting, the cache is repacked without the free slots (and without the columns no
row uses any more) when they are 1/8 of it. Appending a token writes one column of
the buffer instead of copying the whole cache (``DynamicLayer`` appends with
``torch.cat``).

Shared prefixes. Attention is causal, so the keys and values of a prompt's first n tokens
depend on those tokens alone: a prompt that starts with the same n tokens as the prompt
prefilled before it takes their keys and values from it and runs only the rest (every
prompt shares the chat template's header; questions on one document share the document).
Prompts that share at least half of the longer one are decoded one after the other
(groups in lexicographic token order, groups longest first), so the shared part is
still there when the next one is prefilled.

Grouped prefill. A forward pass over a dozen tokens costs about as much as one over fifty
(the weights are read once per pass either way), so short prompts -- a bare request after the
shared chat header, the question after a shared document -- are prefilled together: a run of
prompts in decoding order has its common start run once and the rest of each, right-padded,
as one batch on top of it (`_Prefill`). Padding on the right is invisible to the real tokens
of a causal model.

Other models get fixed batches left-padded to their longest prompt and
``model.generate``: ``generate`` computes position ids from the attention mask, so
padding changes neither positions nor attention.

Either way a batched greedy run gives the same text as one prompt at a time up to
float rounding (a matmul over more rows may round differently); the tests and
``bench/bench_generate.py`` check that the texts are identical.

Early exit: ``stop_when(text so far)`` ends a row as soon as it returns True (a refusal judge's verdict is
decided, :meth:`sstm.evaluate.judge.RefusalJudge.decided`); the row's Generation says ``decided``.

Why not transformers' continuous batching. transformers 5 ships the same idea (``model.generate_batch``,
a ``ContinuousBatchingManager`` thread over a paged KV cache). Measured beside this module on the same
prompts and model (``bench/bench_generate.py --library --prompts 16 --max-new-tokens 32 --threads 1``,
SmolLM2-135M + folded LoRA, bench/results/generate_library.json): identical texts (16/16), but 0.68x our
tokens per CPU-second (11.4 vs 16.7) and 0.77x our tokens/s (5.2 vs 6.8; 5.6 without the 5.5 s its
manager spends starting and stopping over the two calls) -- more than 10 % slower, so this module
stays. (At 2 threads on a loaded CPU the comparison is not fair either way: the library decodes in a
background thread, whose kernels do not contend with busy OpenMP workers the way the main thread's do.)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.generation.stopping_criteria import StoppingCriteria

from sstm.chat import render_prompt
from sstm.errors import SSTMError

ROOM = 64  # cache columns reserved each time the batch cache is widened or repacked
WASTE = 8  # repack once free slots or unused leading columns are 1/WASTE of the cache
# A forward pass costs about as much as prefilling this many more tokens in it (SmolLM2-135M, 2 threads:
# one token alone 69 ms, 12 tokens 101 ms, batched prefill 2.0 ms per token; bench/bench_generate.py).
FORWARD_TOKENS = 32
GROUP_ROWS = 1024  # at most this many padded tokens in one grouped prefill


@dataclass(frozen=True)
class Generation:
    text: str  # decoded new tokens before the first end-of-turn token, stripped
    n_tokens: int  # new tokens generated, the end-of-turn token included when reached
    finished: bool = True  # False: cut off by max_new_tokens (or stopped by `stop_when`) before an end-of-turn token
    decided: bool = False  # stopped early by `stop_when` (its verdict decided), before end of turn and budget

    @property
    def stop(self) -> str:
        """Why decoding stopped: "end of turn", "verdict decided" or "max_new_tokens"."""
        return "end of turn" if self.finished else "verdict decided" if self.decided else "max_new_tokens"


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


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    if batch_size < 1:
        raise SSTMError(f"--batch-size {batch_size}: must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _text(tok, new: Sequence[int]) -> str:
    return tok.decode(new, skip_special_tokens=True).strip()


def _generation(tok, new: Sequence[int], eos: Sequence[int], decided: bool = False) -> Generation:
    """The text before the first end-of-turn token of `new` (token ids after the prompt); `decided`: `new`
    was cut by ``stop_when``."""
    stop = next((j for j, t in enumerate(new) if t in eos), None)
    kept = new if stop is None else new[:stop]
    n = len(new) if stop is None else stop + 1
    return Generation(_text(tok, kept), n, stop is not None, decided and stop is None)


StopWhen = Callable[[str], bool]  # the text decoded so far -> True: that row may stop (its outcome is decided)


# --------------------------------------------------------------------------- decoding in slots


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _order(prompts: Sequence[Sequence[int]], share: bool) -> list[int]:
    """Decoding order: longest first; with `share`, a prompt sharing at least half of the longer one's
    tokens with its lexicographic predecessor joins that one's group, groups longest first."""
    longest = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    if not share:
        return longest
    groups: list[list[int]] = []
    for i in sorted(range(len(prompts)), key=lambda i: prompts[i]):
        prev = prompts[groups[-1][-1]] if groups else ()
        if groups and 2 * _shared(prev, prompts[i]) >= max(len(prev), len(prompts[i])):
            groups[-1].append(i)
        else:
            groups.append([i])
    groups.sort(key=lambda g: -max(len(prompts[i]) for i in g))
    return [i for g in groups for i in g]


class _Prefill:
    """Keys/values of each prompt minus its last token, computed ahead in groups, handed out in `order`.

    A group is a run of prompts in `order` prefilled by one batched forward: with `share`, their common
    start is run once (or taken, as far as it matches, from the last prompt of the previous group) and the
    rest of each prompt, right-padded to the longest rest, runs as one batch on top of it. Attention is
    causal, so padding on the right changes no real token's keys and values, and each row's positions are
    those of an unpadded run. Work counts padded tokens plus FORWARD_TOKENS per forward; of the runs at
    the head of the queue (at most `size` prompts, GROUP_ROWS padded tokens) the group is the one that
    saves the most work over prefilling its prompts one after the other. With group=False every prompt is
    prefilled alone (sharing its start with the previous prompt only).

    `next()` gives (prompt index, per layer (keys, values) [1, heads, len-1, dim]), or None when the
    model's cache is not made of plain full-attention `DynamicLayer`s (sliding windows etc. would not
    survive left padding in the slots).
    """

    def __init__(self, model, device, prompts: Sequence[Sequence[int]], order: Sequence[int], *, share: bool,
                 group: bool, size: int):
        self.model, self.device, self.prompts = model, device, prompts
        self.share, self.size = share, (size if group else 1)
        self.queue = deque(order)
        self.ready: deque[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]] = deque()
        self.ids: list[int] = []  # the last prompt prefilled (minus its last token) and its keys/values
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def pending(self) -> bool:
        return bool(self.queue or self.ready)

    def peek(self) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """The next (prompt index, keys/values), prefilling its group if needed, left in place."""
        if not self.ready and not self._run(self._take()):
            return None
        return self.ready[0]

    def next(self) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        return self.ready.popleft() if self.peek() is not None else None

    def _fresh(self, prev: Sequence[int], ids: Sequence[int]) -> int:
        return len(ids) - (_shared(prev, ids) if self.share else 0)

    def _take(self) -> tuple[list[int], int]:
        """The next group (prompt indices, taken off the queue) and the length of its common start: of the
        runs at the head of the queue, the one that saves the most work over prefilling one by one."""
        first = list(self.prompts[self.queue[0]][:-1])
        start, longest, prev = (len(first) if self.share else 0), len(first), first
        alone = FORWARD_TOKENS + self._fresh(self.ids, first)
        saved, best, best_start = 0, 1, start
        for size in range(2, min(self.size, len(self.queue)) + 1):
            ids = self.prompts[self.queue[size - 1]][:-1]
            start = min(start, _shared(first, ids)) if self.share else 0
            longest, rows = max(longest, len(ids)), size * (max(longest, len(ids)) - start)
            if rows > GROUP_ROWS:
                break
            alone += FORWARD_TOKENS + self._fresh(prev, ids)
            head = start - (_shared(self.ids, first[:start]) if self.share else 0)  # run before the batch
            together = (FORWARD_TOKENS + head if head else 0) + FORWARD_TOKENS + rows
            if alone - together > saved:
                saved, best, best_start = alone - together, size, start
            prev = ids
        return [self.queue.popleft() for _ in range(best)], best_start

    def _forward(self, ids: torch.Tensor, kv, **kw) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        out = self.model(input_ids=ids, use_cache=True, cache=DynamicCache(kv) if kv else None, logits_to_keep=1,
                         **kw)
        cache = getattr(out, "cache", None)
        if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _run(self, taken: tuple[list[int], int]) -> bool:
        """Prefill one group into `ready`; False when the model's cache cannot be decoded in slots."""
        group, start = taken
        rests = [list(self.prompts[i][:-1]) for i in group]
        head = rests[0][:start]
        n = _shared(self.ids, head) if self.share and self.kv is not None else 0
        kv = [(k[:, :, :n], v[:, :, :n]) for k, v in self.kv] if n else None
        if n < start:  # the common start, once
            kv = self._forward(torch.tensor([head[n:]], device=self.device), kv)
            if kv is None:
                return False
        width = max(len(r) for r in rests) - start
        if width:
            ids = torch.tensor([r[start:] + [r[-1]] * (start + width - len(r)) for r in rests], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (start + width - len(r)) for r in rests], device=self.device)
            pos = torch.arange(start, start + width, device=self.device).expand(len(group), width)
            expanded = [(k.expand(len(group), -1, -1, -1), v.expand(len(group), -1, -1, -1)) for k, v in kv or []]
            kv = self._forward(ids, expanded, attention_mask=mask, position_ids=pos)
            if kv is None:
                return False
        for row, (i, r) in enumerate(zip(group, rests)):
            row_kv = [(k[row : row + 1, :, : len(r)], v[row : row + 1, :, : len(r)]) for k, v in kv]
            self.ready.append((i, row_kv))
        self.ids, self.kv = rests[-1], self.ready[-1][1]
        return True


class SlotLayer(DynamicLayer):
    """One layer of the batch cache: keys/values are views of the first `width` columns of zeroed buffers.

    `update` (called by the model each step) writes the new column in place, widening
    the buffers by ROOM columns when full.
    """

    def __init__(self, slots: int, heads: int, dim: int, like: torch.Tensor):
        super().__init__()
        self.is_initialized, self.device = True, like.device
        self.kbuf = like.new_zeros(slots, heads, 0, dim)
        self.vbuf = like.new_zeros(slots, heads, 0, dim)
        self._use(0)

    def _use(self, width: int) -> None:
        self.width = width
        self.keys, self.values = self.kbuf[:, :, :width], self.vbuf[:, :, :width]

    def repack(self, keep: torch.Tensor, lead: int, left: int) -> None:
        """Keep slots `keep`, drop columns [0, lead), add `left` zero columns on the left and ROOM on the right."""
        used = self.width - lead
        for name in ("kbuf", "vbuf"):
            old = getattr(self, name)
            new = old.new_zeros(len(keep), old.shape[1], left + used + ROOM, old.shape[3])
            new[:, :, left : left + used] = old[keep, :, lead : self.width]
            setattr(self, name, new)
        self._use(left + used)

    def place(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write one row's [1, heads, m, dim] keys/values right-aligned into `slot` (m <= width)."""
        m = keys.shape[-2]
        self.kbuf[slot, :, self.width - m : self.width] = keys[0]
        self.vbuf[slot, :, self.width - m : self.width] = values[0]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.width + key_states.shape[-2]
        if end > self.kbuf.shape[-2]:
            self.repack(torch.arange(self.kbuf.shape[0], device=self.kbuf.device), 0, 0)
        self.kbuf[:, :, self.width : end] = key_states
        self.vbuf[:, :, self.width : end] = value_states
        self._use(end)
        return self.keys, self.values


class _Slots:
    """The decoding batch: per slot its row (prompt index or None when free), start column, position, next token."""

    def __init__(self, model, first_kv, n_slots: int, device):
        self.layers = [SlotLayer(n_slots, k.shape[1], k.shape[3], k) for k, _ in first_kv]
        self.cache = Cache(layers=self.layers)
        self.model, self.device = model, device
        self.rows: list[int | None] = [None] * n_slots
        self.start = [0] * n_slots
        self.pos = [0] * n_slots
        self.next = [0] * n_slots

    @property
    def width(self) -> int:
        return self.layers[0].width

    def repack(self, keep: list[int], left: int = 0) -> None:
        """Keep slots `keep` (in order), drop leading columns no kept row uses, pad `left` columns on the left."""
        lead = min(self.start[s] for s in keep) if keep else self.width
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for layer in self.layers:
            layer.repack(index, lead, left)
        self.rows = [self.rows[s] for s in keep]
        self.start = [self.start[s] - lead + left for s in keep]
        self.pos = [self.pos[s] for s in keep]
        self.next = [self.next[s] for s in keep]

    def admit(self, slot: int, row: int, prompt: Sequence[int], kv) -> None:
        m = len(prompt) - 1
        if m > self.width:
            self.repack(list(range(len(self.rows))), left=m - self.width)
        for layer, (k, v) in zip(self.layers, kv):
            layer.place(slot, k, v)
        self.rows[slot], self.start[slot], self.pos[slot], self.next[slot] = row, self.width - m, m, prompt[-1]

    def step(self) -> list[int]:
        """Feed every slot its next token; the greedy token each slot predicts."""
        start = torch.tensor(self.start, device=self.device)
        mask = (torch.arange(self.width + 1, device=self.device) >= start[:, None]).long()
        out = self.model(input_ids=torch.tensor(self.next, device=self.device)[:, None], attention_mask=mask,
                         position_ids=torch.tensor(self.pos, device=self.device)[:, None], cache=self.cache,
                         use_cache=True)
        self.next = out.logits[:, -1, :].float().argmax(-1).tolist()
        self.pos = [p + 1 for p in self.pos]
        return self.next


def _decode_in_slots(model, prompts, order, n_slots, max_new_tokens, eos, advance,
                     share: bool = True, group: bool = True, decided: Callable[[list[int]], bool] | None = None
                     ) -> list[list[int]] | None:
    """New token ids of each prompt (input order); None when the model's cache cannot be decoded in slots.
    A row leaves its slot at an end-of-turn token, at `max_new_tokens`, or when `decided(its new tokens)`."""
    device = _device(model)
    prefill = _Prefill(model, device, prompts, order, share=share, group=group, size=n_slots)
    first = prefill.peek()
    if first is None:
        return None
    batch = _Slots(model, first[1], min(n_slots, len(order)), device)
    new: list[list[int]] = [[] for _ in prompts]
    stop = set(eos)
    while True:
        for slot, row in enumerate(batch.rows):
            if row is None and prefill.pending():
                i, kv = prefill.next()
                batch.admit(slot, i, prompts[i], kv)
        live = [s for s, row in enumerate(batch.rows) if row is not None]
        if not live:
            return new
        unused = min(batch.start[s] for s in live)
        if (not prefill.pending() and (len(batch.rows) - len(live)) * WASTE >= len(batch.rows)) or unused * WASTE >= batch.width:
            batch.repack(live)
        for slot, t in enumerate(batch.step()):
            row = batch.rows[slot]
            if row is None:
                continue
            new[row].append(t)
            if t in stop or len(new[row]) >= max_new_tokens or (decided is not None and decided(new[row])):
                batch.rows[slot] = None
                if advance is not None:
                    advance(1)


# --------------------------------------------------------------------------- entry points


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
    share_prefix: bool = True,
    group_prefill: bool = True,
    stop_when: StopWhen | None = None,
) -> list[Generation]:
    """Greedy completions of `messages` (user turns), in input order, decoding only new tokens.

    `batch_size` rows decode together. prefill_alone=False forces the padded fixed batches;
    share_prefix=False prefills every prompt whole; group_prefill=False runs one forward per prompt.
    `stop_when(text so far)` True ends a row early (early exit: a refusal judge's verdict is decided,
    :meth:`sstm.evaluate.judge.RefusalJudge.decided`); its text is then a prefix of the full-budget text and
    its Generation says ``decided``.
    """
    from transformers import GenerationConfig, StoppingCriteriaList

    if max_new_tokens < 1:
        raise SSTMError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    prompts = encode_prompts(tok, messages)
    if not prompts:
        return []
    eos = eos_ids(model, tok)
    stop = set(eos)
    decided = None if stop_when is None else (lambda new: new[-1] not in stop and stop_when(_text(tok, new)))
    batches = _batches([len(p) for p in prompts], batch_size)
    if prefill_alone and min(len(p) for p in prompts) >= 2:
        new = _decode_in_slots(model, prompts, _order(prompts, share_prefix), batch_size, max_new_tokens, eos,
                               advance, share_prefix, group_prefill, decided)
        if new is not None:
            return [_generation(tok, n, eos, decided is not None and len(n) < max_new_tokens and decided(n))
                    for n in new]
    pad = pad_id(tok, eos)
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad
    )
    device = _device(model)
    out: list[Generation | None] = [None] * len(prompts)
    for idx in batches:
        ids, mask = left_pad([prompts[i] for i in idx], pad)
        criteria = _Decided(ids.shape[1], decided, stop) if decided is not None else None
        seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                              stopping_criteria=StoppingCriteriaList([criteria] if criteria else []))
        for row, (i, new) in enumerate(zip(idx, seqs[:, ids.shape[1] :].tolist())):
            cut = criteria.at.get(row) if criteria else None
            out[i] = _generation(tok, new[:cut] if cut else new, eos, cut is not None and cut < max_new_tokens)
        if advance is not None:
            advance(len(idx))
    return out  # type: ignore[return-value]


class _Decided(StoppingCriteria):
    """A transformers stopping criterion for the padded batches: a row stops once ``decided(its new tokens)``;
    `at` keeps each stopped row's length (``generate`` pads a finished row's later steps)."""

    def __init__(self, start: int, decided: Callable[[list[int]], bool], eos: set[int]):
        self.start, self.decided, self.eos, self.at = start, decided, eos, {}

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = []
        for row, new in enumerate(input_ids[:, self.start :].tolist()):
            if row not in self.at and new and not self.eos.intersection(new) and self.decided(new):
                self.at[row] = len(new)
            done.append(row in self.at)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
