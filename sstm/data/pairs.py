"""Preference pairs for the safety adapter: (prompt, chosen, rejected) rows for DPO.

Built from the safety training split (:func:`sstm.train_data.training_data`) and the base
model's own answers to its harmful prompts (:func:`sstm.train_data.compliance_split`):

* a harmful request (bare or wrapped): chosen = its fitting refusal (the split's response,
  :mod:`sstm.data.refusals`), rejected = the base model's compliance. A base answer that is
  itself a refusal (the default judge says so) or empty gives no pair: nothing to contrast;
* a benign look-alike (contrastive or helpful): chosen = the base model's answer (the split's
  response), rejected = a refusal (:func:`sstm.data.refusals.refusal` with the harm
  ``general``, seeded per row).

DPO (Rafailov et al. 2023) then raises log π(chosen)/π_ref(chosen) − log π(rejected)/π_ref(rejected)
on both kinds at once: refusing the harmful request and answering its look-alike are one contrast,
which supervised fine-tuning sees only as two unrelated targets.

Every pair row also carries ``response`` = ``chosen``, so that the stages that read an adapter's
training rows as (prompt, response) -- the Fisher, RegMean's Gram matrices -- see the behaviour the
adapter is taught, and nothing after training changes.

A user's file (``--data`` with ``--objective dpo``): CSV/JSONL/parquet with the columns
``prompt, chosen, rejected``, used as given.
"""

from __future__ import annotations

import random
from pathlib import Path

from sstm.data.files import read_table
from sstm.data.refusals import refusal
from sstm.data.rows import load_rows, register_rows
from sstm.data.sources import file_sha256, kind_of, subsample
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
BENIGN_KINDS = ("contrastive", "helpful")
GENERATOR = "safety-pairs-v1"


def preference_rows(rows: list[dict], compliance: dict[str, str], refused: dict[str, bool],
                    seed: int = 0) -> tuple[list[dict], dict[str, float]]:
    """(pairs, counts) from safety training `rows`: harmful -> (refusal, base compliance), benign
    look-alike -> (base answer, refusal). `compliance` maps a harmful prompt to the base model's
    answer, `refused` to whether that answer is a refusal. Counts: pairs per kind and what was dropped."""
    rng = random.Random(f"{GENERATOR}:{seed}")
    pairs, counts = [], {"harmful": 0.0, "benign": 0.0, "dropped_base_refused": 0.0, "dropped_empty": 0.0}
    for r in rows:
        keep = {k: r[k] for k in ("category", "harm", "template_id", "request_id", "wrapped", "prompt_id") if k in r}
        if r.get("kind") == "harmful":
            answer = compliance.get(r["prompt"], "").strip()
            if not answer:
                counts["dropped_empty"] += 1
                continue
            if refused.get(r["prompt"], False):
                counts["dropped_base_refused"] += 1
                continue
            pairs.append({"prompt": r["prompt"], "response": r["response"], "chosen": r["response"], "rejected": answer,
                          "kind": "harmful"} | keep)
            counts["harmful"] += 1
        elif r.get("kind") in BENIGN_KINDS:
            pairs.append({"prompt": r["prompt"], "response": r["response"], "chosen": r["response"],
                          "rejected": refusal(rng, "general", False), "kind": r["kind"]} | keep)
            counts["benign"] += 1
        else:
            raise SSTMError(f"safety row {r.get('prompt', '')[:40]!r}: kind {r.get('kind')!r} is neither harmful "
                            f"nor a benign look-alike; preference pairs need the embedded data (or --data with "
                            f"{', '.join(PAIR_COLUMNS)})")
    return pairs, counts


def pairs_split(reg: Registry, data: Artifact, compliance: Artifact, seed: int = 0) -> Artifact:
    """The registered preference pairs of the training split `data`, with the base answers `compliance`
    (:func:`sstm.train_data.compliance_split`)."""
    answers = {r["prompt"]: r for r in load_rows(compliance)}
    pairs, counts = preference_rows(load_rows(data), {p: a["response"] for p, a in answers.items()},
                                    {p: bool(a.get("refused")) for p, a in answers.items()}, seed)
    if not pairs:
        raise SSTMError(f"no preference pair: the base model refused every harmful training prompt of {data.short} "
                        "and there is no benign row")
    origin = {"kind": "preference-pairs", "generator": GENERATOR, "rows": data.id, "compliance": compliance.id,
              "seed": seed} | {k: int(v) for k, v in counts.items()}
    return register_rows(reg, "safety/pairs", pairs, origin)


def file_pairs(reg: Registry, source: str, n: int | None = None, seed: int = 0) -> Artifact:
    """A user's preference file (``prompt, chosen, rejected``), as given (optionally `n` rows, seeded)."""
    if kind_of(source) != "file":
        raise SSTMError(f"--data {source}: preference pairs are read from a CSV/JSONL/parquet file with the columns "
                        f"{', '.join(PAIR_COLUMNS)}")
    path = Path(source).expanduser()
    records = read_table(path, PAIR_COLUMNS)
    rows = []
    for i, r in enumerate(records):
        if not all(isinstance(r.get(c), str) and r[c].strip() for c in PAIR_COLUMNS):
            raise SSTMError(f"--data {path.name} row {i + 1}: {', '.join(PAIR_COLUMNS)} must be non-empty text")
        if r["chosen"] == r["rejected"]:
            raise SSTMError(f"--data {path.name} row {i + 1}: chosen and rejected are the same text")
        rows.append({c: r[c] for c in PAIR_COLUMNS} | {"response": r["chosen"]})
    rows = subsample(rows, n, seed)
    origin = {"kind": "file", "name": path.name, "sha256": file_sha256(path), "partition": "whole file"}
    return register_rows(reg, "safety/pairs", rows, origin | ({"sample_seed": seed} if n and n < len(records) else {}))
