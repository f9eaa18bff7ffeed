"""Draw merged models' refusal-suite responses from a home for labelling (tests/data/README.md, "Merged models'
responses"): a uniform random sample, stratified by merge method x (jailbreak on each split, over-refusal),
with every judge field removed.

Pool: the samples of every eval (jailbreak, over-refusal) whose model is a merged model, less empty responses,
items already in the label set and repeats of an id (id = sha256(prompt + "\\x00" + response)[:12]). In each
stratum of N items, round(f N) are drawn without replacement (``random.Random(seed).sample``), so the batch is
a uniform sample of the pool (proportional allocation). Nothing is selected or ordered by a judge.

    SSTM_HOME=/tmp/demohome .venv/bin/python bench/sample_for_labels.py --out /tmp/to_label.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT

from sstm.registry.store import Registry

LABELS = ROOT / "tests" / "data" / "judge_labels.jsonl"
SUITES = ("jailbreak", "overrefusal")
KEPT = ("prompt", "response", "wrapped")  # of an eval's sample; judge fields (refused, non_answer, score), the
# early-exit reason (stop: "verdict decided" tells the eval judge's verdict) and the reference are dropped


def item_id(prompt: str, response: str) -> str:
    """The label set's id: the first 12 hex digits of sha256(prompt + NUL + response)."""
    return hashlib.sha256((prompt + "\x00" + response).encode()).hexdigest()[:12]


def pool(reg: Registry, known: set[str]) -> dict[tuple[str, str, str], list[dict]]:
    """{(method, suite, split): items} of the merged models' refusal-suite samples, evals in id order, without
    empty responses, ids in `known` and repeats."""
    seen = set(known)
    strata: dict[tuple[str, str, str], list[dict]] = {}
    for ev in sorted(reg.list("eval"), key=lambda a: a.id):
        suite = ev.params.get("suite")
        model = reg.find(ev.inputs.get("model", ""))
        if suite not in SUITES or model is None or model.kind != "merged":
            continue
        split = reg.find(ev.inputs["data"]).params.get("split", "?")
        method = model.params["method"]
        for line in (ev.path / "samples.jsonl").read_text(encoding="utf-8").splitlines():
            s = json.loads(line)
            if not s["response"].strip():
                continue
            iid = item_id(s["prompt"], s["response"])
            if iid in seen:
                continue
            seen.add(iid)
            strata.setdefault((method, suite, split), []).append(
                {"id": iid, "suite": suite, "model_kind": method, "wrapped": s.get("wrapped"),
                 "prompt": s["prompt"], "response": s["response"], "split": split, "eval": ev.id[:12]})
    return strata


def draw(strata: dict[tuple[str, str, str], list[dict]], fraction: float, seed: int) -> list[dict]:
    """round(fraction * N) items of each stratum, uniformly without replacement, strata in sorted order."""
    rng = random.Random(seed)
    out = []
    for key in sorted(strata):
        items = strata[key]
        out += rng.sample(items, round(fraction * len(items)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="the home to read (default: SSTM_HOME)")
    ap.add_argument("--fraction", type=float, default=0.6, help="share of each stratum drawn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="JSONL to write, one item a line, no judge field")
    args = ap.parse_args()
    if not 0 < args.fraction <= 1:
        ap.error("--fraction must be in (0, 1]")
    known = {json.loads(line)["id"] for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()}
    strata = pool(Registry(args.home, writes=False), known)
    drawn = draw(strata, args.fraction, args.seed)
    args.out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in drawn), encoding="utf-8")
    counts = Counter((x["model_kind"], x["suite"], x["split"]) for x in drawn)
    for key in sorted(strata):
        print(f"{'/'.join(key):36s} pool {len(strata[key]):4d} drawn {counts[key]:4d}")
    print(f"drew {len(drawn)} of {sum(map(len, strata.values()))} -> {args.out}")


if __name__ == "__main__":
    main()
