"""The training split of each role, including the benign rows that the base model answers itself.

Utility: the registered ``utility/train`` split. Safety with a user's data: that data as
given (``benign_fraction`` does not apply to it; :class:`sstm.train.TrainConfig` rejects
one set with ``--data``). Embedded safety data: bare and jailbreak-wrapped harmful requests
with refusals that fit their harm (:mod:`sstm.data.refusals`), templates capped to the
context budget, mixed with a share ``benign_fraction`` of benign requests -- mostly the
contrastive prompts of :mod:`sstm.data.contrastive` -- answered by the base model
(:func:`helpful_split`), so the adapter keeps answering what only looks harmful. Preference
training (``--objective dpo``, :func:`preference_data`) pairs these rows with the base model's
own answers to the harmful prompts (:func:`compliance_split`). This is
the one place outside evaluation that runs a model to make data, which is why it lives
next to training and not in :mod:`sstm.data`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sstm import generate  # generate.generate at call time: tests replace it with canned answers
from sstm.data import role_split, rows_sha256, safety_split, utility_split, write_rows
from sstm.data.benign import benign_kind, prompt_id, train_prompts
from sstm.data.pairs import file_pairs, pairs_split
from sstm.data.rows import load_rows
from sstm.data.safety import DEFAULT_N, mixed_split
from sstm.data.sources import subsample
from sstm.evaluate.judge import DEFAULT_JUDGE, load_judge
from sstm.models import load_base, pick_device
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.ui import progress, warn

if TYPE_CHECKING:
    from sstm.train import TrainConfig

# Tokens of --max-len kept for the chat markup, the request and the refusal; a jailbreak
# template of the embedded safety data may use the rest (max_template_tokens = max_len - this).
RESERVED_TOKENS = 128
HELPFUL_SET = "benign-train-v3"
HELPFUL_NEW_TOKENS = 128
COMPLIANCE_SET = "harmful-train-compliance-v1"
COMPLIANCE_NEW_TOKENS = 48  # a rejected answer only has to show compliance: a short budget


def training_data(reg: Registry, cfg: "TrainConfig", base: Artifact, tokenizer) -> Artifact:
    """The registered training split of `cfg.role`.

    Embedded safety data: jailbreak templates capped to the context budget, a share
    `direct_fraction` of the harmful rows bare (the rest wrapped), the requests in the pool's
    proportions or, with `balance_harms`, harm categories in turn, and a share
    `benign_fraction` of the rows are benign requests (a seeded draw from
    :func:`sstm.data.benign.train_prompts`, at most all of them) answered by the base model
    (:func:`helpful_split`: only the drawn prompts are answered).
    """
    if cfg.data is not None:  # a user's data: the reader `fisher --data` and the merges' data passes share
        return role_split(reg, cfg.role, cfg.data, n=cfg.samples, seed=cfg.seed)
    if cfg.role == "utility":
        return utility_split(reg, "train", n=cfg.samples, seed=cfg.seed)
    n = cfg.samples or DEFAULT_N["train"]
    drawn = subsample(train_prompts(), min(round(n * cfg.benign_fraction), len(train_prompts())), cfg.seed)
    helpful = helpful_split(reg, base, cfg.device, prompts=drawn) if drawn else None
    n_helpful = int(helpful.metrics["n"]) if helpful else 0
    refusals = safety_split(reg, "train", n=n - n_helpful, seed=cfg.seed, max_template_tokens=cfg.max_len - RESERVED_TOKENS,
                            tokenizer=tokenizer, direct_fraction=cfg.direct_fraction, balance_harms=cfg.balance_harms)
    return mixed_split(reg, refusals, helpful, n_helpful, cfg.seed) if n_helpful else refusals


# --------------------------------------------------------------------------- benign rows answered by the base model


def whole_sentences(text: str) -> str:
    """`text` up to its last sentence end (., !, ? or a line break); "" when it has none."""
    cut = max(text.rfind("\n"), *(m.end() - 1 for m in re.finditer(r"[.!?](?=\s|$)", text)), -1)
    return text[: cut + 1].strip()


def answered_rows(prompts: list[tuple[str, str]], answers) -> tuple[list[dict], dict[str, float]]:
    """Rows (prompt -> answer; ``kind`` "contrastive" or "helpful", :func:`sstm.data.benign.benign_kind`)
    and counts. An answer cut off by the token budget is kept up to its last
    whole sentence (a half sentence would teach the adapter to stop mid-sentence), or whole when it has
    no sentence end at all (rare for a real model; counted); empty answers are dropped."""
    rows, counts = [], {"cut_to_sentence": 0.0, "cut_mid_sentence": 0.0}
    for (cat, prompt), a in zip(prompts, answers):
        text = a.text if a.finished else whole_sentences(a.text)
        if not a.finished:
            counts["cut_to_sentence" if text else "cut_mid_sentence"] += 1
        text = text or a.text
        if text:
            rows.append({"prompt": prompt, "response": text, "category": cat, "kind": benign_kind(prompt),
                         "prompt_id": prompt_id(cat, prompt), "template_id": "benign"})
    return rows, counts


def helpful_split(reg: Registry, base: Artifact, device: str = "auto", max_new_tokens: int = HELPFUL_NEW_TOKENS,
                  batch_size: int = 16, prompts: list[tuple[str, str]] | None = None) -> Artifact:
    """(category, prompt) `prompts` (default: every embedded benign training prompt) answered by the base
    model (greedy): a `dataset` with input `base`, built once per base model and prompt list, then a cache hit.
    """
    prompts = train_prompts() if prompts is None else prompts
    drawn = {"n_prompts": len(prompts), "prompts_sha256": rows_sha256({"category": c, "prompt": p} for c, p in prompts)}
    params = {"split": "benign/train", "source": {"kind": "self-distilled", "set": HELPFUL_SET, "decoding": "greedy",
                                                  "max_new_tokens": max_new_tokens} | drawn}

    def build(out: Path) -> dict[str, float]:
        model, tok = load_base(base, pick_device(device))
        with progress("answer benign training prompts (base model)", len(prompts), unit="prompts") as advance:
            answers = generate.generate(model, tok, [p for _, p in prompts], batch_size=batch_size,
                                        max_new_tokens=max_new_tokens, advance=advance)
        rows, counts = answered_rows(prompts, answers)
        if not rows:
            warn("the base model answered every benign training prompt with an empty text: no benign rows")
        write_rows(out, rows)
        return {"n": float(len(rows)), **counts}

    return reg.get_or_build("dataset", params, {"base": base}, code_fingerprint(__name__), build,
                            label="benign/train")



# --------------------------------------------------------------------------- preference pairs (DPO)


def preference_data(reg: Registry, cfg: "TrainConfig", base: Artifact, tokenizer) -> Artifact:
    """The registered preference pairs of `cfg` (:mod:`sstm.data.pairs`): a user's ``--data`` file as given,
    else the embedded safety training split of the same settings paired with the base model's answers to its
    harmful prompts (:func:`compliance_split`)."""
    if cfg.data is not None:
        return file_pairs(reg, cfg.data, cfg.samples, cfg.seed)
    data = training_data(reg, cfg, base, tokenizer)
    harmful = sorted({r["prompt"] for r in load_rows(data) if r.get("kind") == "harmful"})
    compliance = compliance_split(reg, base, cfg.device, prompts=harmful)
    return pairs_split(reg, data, compliance, cfg.seed)


def compliance_split(reg: Registry, base: Artifact, device: str = "auto", prompts: list[str] = (),
                     max_new_tokens: int = COMPLIANCE_NEW_TOKENS, batch_size: int = 16) -> Artifact:
    """The base model's greedy answers to harmful `prompts` (the rejected side of a harmful pair): a `dataset`
    with input `base`, built once per base model and prompt list. Rows: prompt, response (cut at its last
    whole sentence when the budget cut it, as :func:`answered_rows`), ``refused`` (the default judge's verdict:
    a base answer that already refuses is no compliance to reject)."""
    prompts = list(prompts)
    judge = load_judge(DEFAULT_JUDGE)
    params = {"split": "safety/compliance", "source": {
        "kind": "self-generated", "set": COMPLIANCE_SET, "decoding": "greedy", "max_new_tokens": max_new_tokens,
        "judge": judge.name, "judge_sha256": judge.sha256, "n_prompts": len(prompts),
        "prompts_sha256": rows_sha256({"prompt": p} for p in prompts)}}

    def build(out: Path) -> dict[str, float]:
        model, tok = load_base(base, pick_device(device))
        with progress("answer harmful training prompts (base model)", len(prompts), unit="prompts") as advance:
            answers = generate.generate(model, tok, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                        advance=advance)
        texts = [a.text.strip() if a.finished else (whole_sentences(a.text) or a.text.strip()) for a in answers]
        refused = judge.verdicts(prompts, texts)
        write_rows(out, ({"prompt": p, "response": t, "refused": r} for p, t, r in zip(prompts, texts, refused)))
        return {"n": float(len(prompts)), "refused": float(sum(refused)), "empty": float(sum(not t for t in texts))}

    return reg.get_or_build("dataset", params, {"base": base}, code_fingerprint(__name__), build,
                            label="safety/compliance")
