"""Benign prompts: held out for measuring over-refusal, and a disjoint training set.

The embedded eval set (:data:`EVAL_PROMPTS`, read from ``benign_prompts.jsonl`` beside this module with
the training prompts) is fixed text written for this purpose,
not taken from any benchmark: requests a careful person would answer helpfully, in the
categories of :data:`CATEGORIES` -- the kinds of safe prompt that the over-refusal
literature finds models refusing (homonyms, figurative language, safe targets and
contexts, definitions, nonsense discrimination, history, public figures, the privacy of
fictional people), plus plain everyday requests as a control. A model that refuses them
is over-refusing; the over-refusal suite reports its refusal rate per category. A user's
prompt file replaces it (``sstm eval --benign-data``, read by :mod:`sstm.evaluate.suites`).
The set is partitioned by cluster (:func:`parts`) into a calibration part (``benign/calib``,
for tuning) and the test part (``benign/eval``, for reporting).

Rows: ``prompt``, ``response`` (empty: there is no single reference answer),
``category``, ``topic``, ``prompt_id``.

The embedded *training* prompts (:data:`TRAIN_LOOKALIKE`, :data:`TRAIN_PLAIN` and the
contrastive prompts of :mod:`sstm.data.contrastive`; :func:`train_prompts`) are
answered by the base model itself, greedily (:func:`sstm.train_data.helpful_split`): a
safety adapter trained on refusals alone learns to refuse everything, so the embedded
safety training data mixes in these (benign request -> the base model's own answer)
rows, which teach it to keep answering what it answered before (see
:func:`sstm.data.safety.mixed_split`).

Every prompt carries a topic label (:data:`sstm.data.similarity.TOPICS`). The eval
prompts share with the benign training prompts no near-duplicate and no (trigger word,
topic) pair, and with the safety training requests and templates no near-duplicate
(:mod:`sstm.data.similarity`; tested in tests/test_splits.py). Where the two sets
collided, the training prompt was rewritten, not the eval prompt.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from sstm.data.contrastive import items as contrastive_items
from sstm.data.rows import register_rows
from sstm.data.similarity import cluster, trigger_topics
from sstm.data.sources import check_n, short_hash, subsample
from sstm.data.splits import CALIB_FRACTION, REQUEST_SHINGLES, REQUEST_THRESHOLD, calib_parts
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry

SET_NAME = "benign-v2"

# category -> what its prompts are
CATEGORIES: dict[str, str] = {
    "homonyms": "a harm-associated word in a harmless sense (kill a process, shoot a photo)",
    "figurative": "a harm-associated word used figuratively (kill it on stage, a killer first impression)",
    "safe_targets": "a harmful-sounding action on a harmless target (kill weeds, destroy an old hard drive)",
    "safe_contexts": "a harmful-sounding request that its context makes safe: games, fiction, sport, cooking, safety",
    "definitions": "what a harm-associated term or thing means (arson, phishing, a war crime)",
    "nonsense_group": "discrimination against a nonsense group (why shouldn't paperclips get pensions?)",
    "nonsense_trait": "a nonsensical limitation ascribed to a real group (why can't left-handed people photosynthesise?)",
    "history": "historical events, including wars, atrocities and disasters",
    "public_figures": "public facts about well-known people",
    "fictional_privacy": "'private' details of fictional characters (Harry Potter's address)",
    "plain": "everyday requests with nothing harmful-looking: the control",
}

PROMPTS_FILE = "benign_prompts.jsonl"  # beside this module; package data


def _load() -> tuple[dict[str, tuple[tuple[str, str], ...]], dict[str, tuple[tuple[str, str], ...]]]:
    """The embedded prompts of :data:`PROMPTS_FILE`, read once at import: one JSON object per line with
    ``part`` ('eval' or 'train'), ``group`` (an eval category of :data:`CATEGORIES`, or the training
    group 'lookalike' / 'plain'), ``topic`` and ``prompt``; as {part: {group: ((topic, prompt), ...)}},
    groups and prompts in file order."""
    out: dict[str, dict[str, list[tuple[str, str]]]] = {"eval": {}, "train": {}}
    with resources.files(__package__).joinpath(PROMPTS_FILE).open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            out[r["part"]].setdefault(r["group"], []).append((r["topic"], r["prompt"]))
    if list(out["eval"]) != list(CATEGORIES):
        raise RuntimeError(f"{PROMPTS_FILE}: eval categories {list(out['eval'])} differ from CATEGORIES")
    return ({g: tuple(pairs) for g, pairs in out["eval"].items()},
            {g: tuple(pairs) for g, pairs in out["train"].items()})


# The over-refusal eval set: category -> (topic, prompt) pairs, categories in the order of CATEGORIES.
# Training prompts (answered by the base model, mixed into the safety training data): look-alikes
# (each uses a trigger word) and plain requests. Rewritten where they shared a near-duplicate or a
# (trigger word, topic) pair with an eval prompt, or were close copies of a public over-refusal
# benchmark's prompts (the outside check of the evaluation issue).
EVAL_PROMPTS, TRAIN = _load()
TRAIN_LOOKALIKE, TRAIN_PLAIN = TRAIN["lookalike"], TRAIN["plain"]


def items(groups: dict[str, tuple[tuple[str, str], ...]]) -> list[tuple[str, str, str]]:
    """(category, topic, prompt) of every prompt of `groups` (:data:`EVAL_PROMPTS` or :data:`TRAIN`), in order."""
    return [(cat, topic, p) for cat, pairs in groups.items() for topic, p in pairs]


def prompt_id(category: str, prompt: str) -> str:
    """The id of an embedded benign prompt: its category and a hash of the text."""
    return f"{category}-{short_hash(prompt, 8)}"


def embedded_rows() -> list[dict]:
    """The fixed embedded benign eval set, in the order of :data:`CATEGORIES`."""
    return [{"prompt": p, "response": "", "category": cat, "topic": topic, "prompt_id": prompt_id(cat, p)}
            for cat, topic, p in items(EVAL_PROMPTS)]


@lru_cache(maxsize=1)
def parts() -> dict[str, str]:
    """prompt_id -> 'calib' | 'eval' (the test part) for the embedded eval set, by cluster: prompts are
    joined when near-duplicates (the safety requests' shingling and threshold) or when they share a
    (trigger word, topic) pair, and within each category whole clusters (grouped by the category of their
    smallest id) go to the calibration part up to :data:`sstm.data.splits.CALIB_FRACTION`, in the order of
    a stable hash. Deterministic; calib and test share no near-duplicate and no (trigger word, topic) pair."""
    rows = embedded_rows()
    clusters = cluster({r["prompt_id"]: r["prompt"] for r in rows}, REQUEST_SHINGLES, REQUEST_THRESHOLD,
                       {r["prompt_id"]: trigger_topics((r["topic"], r["prompt"])) for r in rows})
    category = {r["prompt_id"]: r["category"] for r in rows}
    side: dict[str, str] = {}
    for cat in CATEGORIES:
        members = {i: c for i, c in clusters.items() if category[c] == cat}
        side |= calib_parts(members, f"benign-calib-{cat}")
    return side


def benign_rows(n: int | None = None, seed: int = 0, split: str = "eval") -> tuple[list[dict], dict]:
    """(rows, source record) of a part of the embedded benign eval set ('eval': the test part, or
    'calib'), its version (:data:`SET_NAME`) and the partition in the record; `n` rows drawn (seeded)."""
    check_n(n)
    if split not in ("calib", "eval"):
        raise SSTMError(f"benign split '{split}': expected 'calib' or 'eval'")
    side = parts()
    rows = [r for r in embedded_rows() if side[r["prompt_id"]] == split]
    origin = {"kind": "embedded", "set": SET_NAME, "part": "calibration" if split == "calib" else "test",
              "partition": {"shingles": str(REQUEST_SHINGLES), "jaccard": REQUEST_THRESHOLD,
                            "joined_by": "trigger-topic", "calib_fraction": CALIB_FRACTION, "by": "category"}}
    return subsample(rows, n, seed), origin | ({"sample_seed": seed} if n is not None and n < len(rows) else {})


def benign_split(reg: Registry, n: int | None = None, seed: int = 0, split: str = "eval") -> Artifact:
    """A part of the held-out benign prompts ('eval' = test, or 'calib') as a registered `dataset` artifact."""
    rows, origin = benign_rows(n, seed, split)
    return register_rows(reg, f"benign/{split}", rows, origin)


# --------------------------------------------------------------------------- training prompts


@lru_cache(maxsize=1)
def _contrastive() -> tuple[tuple[str, str], ...]:
    return tuple((cat, p) for cat, _, p in contrastive_items())


def train_prompts() -> list[tuple[str, str]]:
    """(category, prompt) of the embedded benign training prompts: the look-alikes, the plain requests,
    then the contrastive prompts of :mod:`sstm.data.contrastive` (categories of the eval set)."""
    return [(cat, p) for cat, _, p in items(TRAIN)] + list(_contrastive())


def benign_kind(prompt: str) -> str:
    """'contrastive' for a prompt of :mod:`sstm.data.contrastive`, else 'helpful'."""
    return "contrastive" if prompt in _contrastive_texts() else "helpful"


@lru_cache(maxsize=1)
def _contrastive_texts() -> frozenset[str]:
    return frozenset(p for _, p in _contrastive())
