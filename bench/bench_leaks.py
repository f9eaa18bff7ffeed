"""Near-duplicate leaks between the train and eval splits of the embedded safety and benign data.

For each eval item, the largest Jaccard similarity to any train item (exact, all pairs;
see sstm.data.similarity), and how many eval items reach the leak threshold:

  * prompts:   `safety_rows("eval")` (200 rows, templates capped at the standard eval's
               --max-context-tokens 512 tokens) vs `safety_rows("train")` (the default
               1000 rows, and the standard run's 192 refusal rows; templates capped at
               max_len 512 - RESERVED_TOKENS = 384 tokens), word 8-grams;
  * templates: the eval template pool vs the train template pool (uncapped), word 8-grams;
  * requests:  the eval request pool vs the train request pool, word 3-grams and character
               5-grams;
  * benign:    the over-refusal eval prompts vs the benign training prompts (word 3-grams,
               character 5-grams), the pairs that share a (trigger word, topic) pair and
               those that share a trigger word in any topic; and vs the safety
               train requests (character 5-grams).

Lengths are counted with the embedded SmolLM2 tokenizer (read from its GGUF; no model is
loaded), or as characters / 4 with --no-tokenizer.

    .venv/bin/python bench/bench_leaks.py [--no-tokenizer] [--out bench/results/leaks.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_result  # noqa: E402

from sstm.data import benign, safety  # noqa: E402
from sstm.data.similarity import Shingling, nearest, shared_trigger_topics, shared_triggers  # noqa: E402
from sstm.train_data import RESERVED_TOKENS  # noqa: E402

WORD8, WORD3, CHAR5 = Shingling("word", 8), Shingling("word", 3), Shingling("char", 5)
THRESHOLD = 0.6
EVAL_CAP, TRAIN_MAX_LEN, STANDARD_REFUSALS = 512, 512, 192  # the standard preset's settings


def summary(eval_texts, train_texts, shingling, threshold=THRESHOLD, show=0) -> dict:
    near = nearest(eval_texts, train_texts, shingling)
    out = {"shingles": str(shingling), "n_eval": len(eval_texts), "n_train": len(train_texts),
           "at_or_above": near.count(threshold), "max": round(float(near.score.max()), 3)}
    worst = near.score.argsort()[::-1][:show]
    if show:
        out["worst"] = [(round(float(near.score[i]), 3), eval_texts[i][:80], train_texts[near.index[i]][:80])
                        for i in worst]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-tokenizer", action="store_true", help="count template length as characters / 4")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "leaks.json")
    args = ap.parse_args()
    tok = None
    if not args.no_tokenizer:
        from transformers import AutoTokenizer

        from sstm.models import embedded_gguf

        gguf = embedded_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    t0 = time.perf_counter()
    ev, src = safety.safety_rows("eval", max_template_tokens=EVAL_CAP, tokenizer=tok)
    train_cap = TRAIN_MAX_LEN - RESERVED_TOKENS
    tr, _ = safety.safety_rows("train", max_template_tokens=train_cap, tokenizer=tok)
    tr_std, _ = safety.safety_rows("train", n=STANDARD_REFUSALS, max_template_tokens=train_cap, tokenizer=tok)
    (rq_tr, tp_tr), (rq_ev, tp_ev) = safety.split_pools("train"), safety.split_pools("eval")
    prompts = [r["prompt"] for r in ev]
    eval_items = [(topic, p) for _, topic, p in benign.items(benign.EVAL_PROMPTS)]
    train_items = [(topic, p) for _, topic, p in benign.items(benign.TRAIN)]
    benign_eval, benign_train = [p for _, p in eval_items], [p for _, p in train_items]
    shared = shared_triggers(benign_eval, benign_train)
    shared_pairs = shared_trigger_topics(eval_items, train_items)
    result = {
        "threshold": THRESHOLD, "length_unit": "chars/4" if tok is None else "tokens",
        "eval_cap": EVAL_CAP, "train_cap": train_cap, "safety_source": src,
        "prompts_default_train": summary(prompts, [r["prompt"] for r in tr], WORD8, show=5),
        "prompts_standard_train": summary(prompts, [r["prompt"] for r in tr_std], WORD8),
        "templates": summary([t.text for t in tp_ev], [t.text for t in tp_tr], WORD8, show=5),
        "requests_word3": summary([r.text for r in rq_ev], [r.text for r in rq_tr], WORD3, show=5),
        "requests_char5": summary([r.text for r in rq_ev], [r.text for r in rq_tr], CHAR5, show=5),
        "pools": {"requests": {"train": len(rq_tr), "eval": len(rq_ev)},
                  "templates": {"train": len(tp_tr), "eval": len(tp_ev)},
                  "templates_capped": {"train": len(safety.split_pools("train", train_cap, tok)[1]),
                                       "eval": len(safety.split_pools("eval", EVAL_CAP, tok)[1])}},
        "benign_word3": summary(benign_eval, benign_train, WORD3, show=3),
        "benign_char5": summary(benign_eval, benign_train, CHAR5, show=3),
        "benign_vs_safety_requests_char5": summary(benign_eval, [r.text for r in rq_tr], CHAR5, show=3),
        "benign_shared_trigger_topic": {"eval_prompts": len({a for a, _, _ in shared_pairs}), "pairs": len(shared_pairs)},
        "benign_shared_trigger_word": {"eval_prompts": len({a for a, _, _ in shared}), "pairs": len(shared),
                                       "examples": [(a, b, sorted(t)) for a, b, t in shared[:5]]},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    for k, v in result.items():
        print(f"{k}: {v}")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
