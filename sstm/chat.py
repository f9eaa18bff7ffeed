"""Turning dataset rows into chat-formatted token ids, with loss on the response only.

SmolLM2's pad token is its end-of-turn token, so labels are never derived from
``input_ids == pad_id`` (the end-of-turn token would never be learned and
generations would run on). The response span is found by rendering the chat
template once without and once with the assistant turn: everything after the
generation prompt is the response, end-of-turn token included.
"""

from __future__ import annotations

import torch

CONTEXT_TEMPLATE = (
    "Answer the question using only the document below. If the document does not "
    "contain the answer, say that it does not.\n\nDocument:\n{context}\n\nQuestion: {question}"
)


def truncate_tokens(tokenizer, text: str, max_tokens: int | None) -> tuple[str, bool]:
    """`text` cut to at most `max_tokens` tokens; returns (text, was_truncated)."""
    if max_tokens is None:
        return text, False
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[: max(max_tokens, 0)]), True


def user_message(row: dict, tokenizer=None, max_context_tokens: int | None = None) -> str:
    """The user turn: the prompt, preceded by the (truncated) document when the row has one."""
    context = row.get("context")
    if not context:
        return row["prompt"]
    if tokenizer is not None:
        context, _ = truncate_tokens(tokenizer, context, max_context_tokens)
    return CONTEXT_TEMPLATE.format(context=context, question=row["prompt"])


def render_prompt(tokenizer, message: str) -> str:
    """Chat-template text of one user turn followed by the assistant generation prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def cut_middle(tokenizer, text: str, max_tokens: int) -> str:
    """`text` with its middle replaced by " ... " so it has about `max_tokens` tokens.

    Jailbreak templates put their framing first and the request last; cutting the
    middle keeps both.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    head = max_tokens // 2
    tail = max_tokens - head
    return tokenizer.decode(ids[:head]) + " ... " + tokenizer.decode(ids[len(ids) - tail:])


def _turn_ids(tokenizer, message: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of (chat prompt with generation prompt, assistant response incl. end of turn)."""
    prompt = render_prompt(tokenizer, message)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}, {"role": "assistant", "content": response}],
        tokenize=False,
    )
    if not full.startswith(prompt):
        raise ValueError("chat template: the assistant turn does not extend the generation prompt")
    return (tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"])


def encode_example(tokenizer, row: dict, max_len: int, max_context_tokens: int | None = None) -> dict:
    """input_ids / attention_mask / labels (-100 outside the response) for one row.

    When the whole example exceeds `max_len`, the prompt is shortened so that the
    response (the part that carries the loss) stays whole: the document is cut
    first; a row without a document has the middle of its message cut. Only when
    that cannot help (a response longer than the budget) is the sequence cut at the end.
    """
    msg = user_message(row, tokenizer, max_context_tokens)
    p_ids, r_ids = _turn_ids(tokenizer, msg, row["response"])
    excess = len(p_ids) + len(r_ids) - max_len
    if excess > 0 and row.get("context"):
        ctx_ids = tokenizer(row["context"], add_special_tokens=False)["input_ids"]
        budget = min(max_context_tokens or len(ctx_ids), len(ctx_ids)) - excess - 4
        if budget > 16:
            return encode_example(tokenizer, row, max_len, budget)
    elif excess > 0:
        keep = len(tokenizer(msg, add_special_tokens=False)["input_ids"]) - excess - 8
        if keep > 16:
            p_ids, r_ids = _turn_ids(tokenizer, cut_middle(tokenizer, msg, keep), row["response"])
    ids = (p_ids + r_ids)[:max_len]
    labels = ([-100] * len(p_ids) + r_ids)[:max_len]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def encode_rows(tokenizer, rows: list[dict], max_len: int) -> tuple[list[dict], list[int]]:
    """Encoded examples that keep a response token the shifted loss can see, and the dropped row positions.

    Label 0 never enters the next-token loss, so a row counts only with a response label at position >= 1.
    Each kept example carries ``row``, its position in `rows`.
    """
    kept, dropped = [], []
    for i, row in enumerate(rows):
        ex = encode_example(tokenizer, row, max_len)
        if any(lab != -100 for lab in ex["labels"][1:]):
            kept.append(ex | {"row": i})
        else:
            dropped.append(i)
    return kept, dropped


def collate(examples: list[dict], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a list of encoded examples into a batch; padding has mask 0 and label -100."""
    width = max(len(e["input_ids"]) for e in examples)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in examples:
        n = width - len(e["input_ids"])
        pad = {"input_ids": [pad_id] * n, "attention_mask": [0] * n, "labels": [-100] * n}
        for k in out:
            seq = e.get(k, [1] * len(e["input_ids"])) if k != "labels" else e.get("labels", [-100] * len(e["input_ids"]))
            out[k].append(seq + pad[k] if side == "right" else pad[k] + seq)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
