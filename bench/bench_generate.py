"""Eval generation throughput on SmolLM2-135M: slot decoding, shared prefixes, the refusal budget, slots.

Same prompts, same process, modes alternated in each repetition (so machine load hits all
alike): a mix of the eval suites' prompts in two calls, as eval makes them -- refusal-suite
prompts (jailbreak eval rows direct and wrapped in templates of at most --max-context-tokens,
short questions) at the refusal suites' budget (``Suite.new_tokens``: min(--max-new-tokens,
``JUDGED_TOKENS``)), and RepliQA-style document questions (five per document) at
--max-new-tokens -- generated greedily by the model with a seeded random LoRA of the project's
training shape (rank 16, alpha 32, attention + MLP + lm_head) folded into the weights
(``sstm.evaluate.stage.fold_lora``), what eval runs for an adapter or a merge:

  one at a time              the pre-slot path (per-prompt prefill, ``model.generate``), batch 1,
                             PEFT model (LoRA unmerged), on every --reference-every-th prompt
  slots (B)                  ``sstm.generate`` without shared prefixes: rows leave their slot when
                             done, the next prompt takes it, every prompt prefilled whole
  slots (B), shared prefix   a prompt reuses the keys/values of the start it shares with the
                             previous prompt (chat header, document); one forward per prompt
  slots (B), shared prefix,  ``sstm.generate``'s default: short rests of several prompts prefilled
    grouped prefill          in one right-padded forward on top of their common start
  before: slots (B), ...     the eval path before the refusal budget: slots, no shared prefix,
                             every prompt at --max-new-tokens (rows/s only: other texts)

Throughput = generated tokens (each row's end-of-turn token included) / seconds, wall and
process CPU time, and eval rows / second; for the slot modes also the CPU time of the per-prompt
prefill, and the decoding throughput without it. Every mode's texts (but the `before` one's) are
compared with the one-at-a-time texts. The machine's ceiling: plain
``torch.nn.functional.linear`` on the model's decode shapes ((B x hidden) times each projection
and the lm_head), timed alone, gives the tokens/s a decode step made only of these matmuls would
reach at batch B. The whole job's ceiling adds the prefill: its FLOPs (2 x non-embedding parameters
per prompt token not shared with the previous prompt) at the matmul rate of 512-row shapes, plus the
generated tokens at the decode ceiling -- the tokens/s no path can beat on these prompts on this CPU.

    .venv/bin/python bench/bench_generate.py [--prompts 48] [--max-new-tokens 64] [--reps 1] [--threads 1]

``--library``: only ``sstm.generate`` (its default) beside transformers' own continuous batching
(``model.generate_batch``, :func:`library_generate`) on the same prompts and model, texts compared;
writes bench/results/generate_library.json.

Prints a table and writes bench/results/generate.json. Uses $SSTM_HOME, or bench/.home, as
registry home (the SmolLM2 conversion is cached there).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import write_result  # noqa: E402

from sstm.chat import user_message  # noqa: E402
from sstm.evaluate.stage import fold_lora  # noqa: E402
from sstm.evaluate.suites import SUITES  # noqa: E402
from sstm.generate import (_batches, _generation, _Prefill, encode_prompts, eos_ids, generate, left_pad,  # noqa: E402
                           pad_id)
from sstm.models import load_base, pick_device, resolve_base  # noqa: E402
from sstm.registry import Registry  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about autumn rain.",
    "How do I convert Celsius to Fahrenheit?",
    "What are the main differences between a list and a tuple in Python?",
    "How do I kill a Python process that is stuck?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
]


def prompts(n: int, tok, max_context_tokens: int) -> tuple[list[str], list[str]]:
    """n prompts: (refusal-suite prompts: 1/2 jailbreak eval rows direct and wrapped, 1/8 short questions;
    3/8 document questions, the eval split's five per document)."""
    from sstm.data.safety import generate_rows as safety_rows
    from sstm.data.utility import generate_rows as utility_rows

    n_safety, n_docs = n // 2, (3 * n) // 8
    n_short = n - n_safety - n_docs
    safety = [r["prompt"] for r in safety_rows("eval", n_safety, seed=0, max_template_tokens=max_context_tokens,
                                               tokenizer=tok)]
    docs = [user_message(r, tok, max_context_tokens) for r in utility_rows("eval", n_docs, seed=0)]
    return safety + [QUESTIONS[i % len(QUESTIONS)] for i in range(n_short)], docs


# --------------------------------------------------------------------------- today's path, frozen for comparison


def current_generate(model, tok, messages, *, batch_size: int, max_new_tokens: int):
    """`sstm.generate.generate` before slot decoding: fixed batches, each prompt prefilled alone into a
    left-padded DynamicCache, then ``model.generate`` until the batch's longest row is done."""
    from transformers import GenerationConfig
    from transformers.cache_utils import DynamicCache

    prompts_ = encode_prompts(tok, messages)
    eos = eos_ids(model, tok)
    pad = pad_id(tok, eos)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=pad)
    out = [None] * len(prompts_)
    with torch.inference_mode():
        for idx in _batches([len(p) for p in prompts_], batch_size):
            ids, mask = left_pad([prompts_[i] for i in idx], pad)
            width = ids.shape[1]
            caches = [model(input_ids=torch.tensor([prompts_[i][:-1]]), use_cache=True, logits_to_keep=1).cache
                      for i in idx]
            layers = [tuple(torch.cat([torch.nn.functional.pad(getattr(c.layers[j], kv),
                                                               (0, 0, width - 1 - c.layers[j].keys.shape[-2], 0))
                                       for c in caches]) for kv in ("keys", "values"))
                      for j in range(len(caches[0].layers))]
            seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                  cache=DynamicCache(layers))
            for i, new in zip(idx, seqs[:, width:].tolist()):
                out[i] = _generation(tok, new, eos)
    return out


# --------------------------------------------------------------------------- models


def with_random_lora(model, seed: int, rel: float = 0.05):
    """`model` as a PEFT model with a seeded random LoRA (rank 16, alpha 32, the training targets),
    each B scaled so that |s B A|_F = rel |W|_F -- a trained adapter's order of magnitude."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from sstm.train import TARGET_MODULES

    torch.manual_seed(seed)
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=list(TARGET_MODULES), init_lora_weights=False,
                     task_type="CAUSAL_LM")
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for m in peft.modules():
            if isinstance(m, LoraLayer):
                a, b, s = m.lora_A["default"].weight, m.lora_B["default"].weight, m.scaling["default"]
                b.mul_(rel * m.get_base_layer().weight.norm() / (s * (b @ a)).norm())
    return peft.eval()


def linear_ceiling(config, batch: int, reps: int = 5) -> dict:
    """Tokens/s of a decode step made only of the model's matmuls at `batch` rows (plain F.linear, fp32)."""
    h, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]  # (in, out) per layer
    total, flops = 0.0, 0
    for k, n, count in [(k, n, config.num_hidden_layers) for k, n in shapes] + [(h, config.vocab_size, 1)]:
        x, w = torch.randn(batch, k), torch.randn(n, k)
        torch.nn.functional.linear(x, w)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        total += (time.perf_counter() - t0) / reps * count
        flops += 2 * batch * k * n * count
    return {"batch": batch, "step_ms": round(total * 1e3, 2), "tokens_per_s": round(batch / total, 1),
            "gflop_per_s": round(flops / total / 1e9, 1)}


def job_ceiling(model, calls: list[list[list[int]]], generated: int, prefill_rate: dict, decode: dict) -> dict:
    """Seconds (and tokens/s) of the whole job at the machine's matmul rates: every prompt token not shared
    with the previous prompt in decoding order at 2 x non-embedding parameters FLOPs, at `prefill_rate`
    (a 512-row `linear_ceiling`), plus `generated` tokens at the `decode` ceiling."""
    from sstm.generate import _order, _shared

    fresh = 0
    for prompts_ in calls:
        prev: list[int] = []
        for i in _order(prompts_, True):
            fresh += len(prompts_[i]) - 1 - _shared(prev, prompts_[i][:-1])
            prev = prompts_[i][:-1]
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    prefill_s = 2 * params * fresh / (prefill_rate["gflop_per_s"] * 1e9)
    seconds = prefill_s + generated / decode["tokens_per_s"]
    return {"prefill_tokens": fresh, "prefill_gflop_per_s": prefill_rate["gflop_per_s"],
            "prefill_seconds": round(prefill_s, 2), "generated_tokens": generated, "seconds": round(seconds, 2),
            "tokens_per_s": round(generated / seconds, 1)}


def time_prefill() -> list[float]:
    """Make `sstm.generate`'s prefill (`_Prefill._run`) add its CPU seconds to the returned cell."""
    spent, call = [0.0], _Prefill._run

    def timed(self, taken):
        c0 = time.process_time()
        try:
            return call(self, taken)
        finally:
            spent[0] += time.process_time() - c0

    _Prefill._run = timed
    return spent


# --------------------------------------------------------------------------- the library path


def library_generate(model, tok, messages, *, batch_size: int, max_new_tokens: int, page_size: int = 64,
                     timing: dict | None = None):
    """The same greedy generation through transformers' continuous batching (``model.generate_batch``: a
    ``ContinuousBatchingManager`` thread, paged KV cache, requests admitted as others finish), the same token
    ids in, texts cut at the first end-of-turn token as ``sstm.generate`` cuts them. The paged cache is sized
    to hold every request at once (``num_blocks``), not from free memory. `timing` gets the seconds before
    the first request was scheduled and after the last finished (the manager's start and stop)."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    ids = encode_prompts(tok, messages)
    eos = eos_ids(model, tok)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=pad_id(tok, eos))
    blocks = sum(-(-(len(p) + max_new_tokens) // page_size) for p in ids)
    cb = ContinuousBatchingConfig(page_size=page_size, num_blocks=blocks, max_requests_per_batch=batch_size)
    t0 = time.perf_counter()
    out = model.generate_batch(ids, generation_config=config, continuous_batching_config=cb, progress_bar=False,
                               warmup=False)
    t1 = time.perf_counter()
    results = list(out.values())
    if len(results) != len(ids) or any(r.error for r in results):
        raise RuntimeError(f"generate_batch: {sum(r.error is not None for r in results)} failed, "
                           f"{len(ids) - len(results)} missing")
    if timing is not None:
        timing["start_s"] = timing.get("start_s", 0) + min(r.lifespan[0] for r in results) - t0
        timing["stop_s"] = timing.get("stop_s", 0) + t1 - max(r.lifespan[1] for r in results)
    return [_generation(tok, r.generated_tokens, eos) for r in results]


def library_bench(args, folded, tok, calls: dict, budgets: dict, base) -> None:
    """sstm.generate (default: slots, shared prefixes, grouped prefill) beside transformers' continuous
    batching on the same prompts and model, alternated; texts compared row by row."""
    b = int(args.batch_sizes.split(",")[0])
    modes = {f"sstm.generate ({b})": lambda kind, t: generate(folded, tok, calls[kind], batch_size=b,
                                                              max_new_tokens=budgets[kind]),
             f"transformers continuous batching ({b})": lambda kind, t: library_generate(
                 folded, tok, calls[kind], batch_size=b, max_new_tokens=budgets[kind], timing=t)}
    generate(folded, tok, calls["refusal"][:2], batch_size=2, max_new_tokens=4)  # warm-up
    library_generate(folded, tok, calls["refusal"][:2], batch_size=2, max_new_tokens=4)
    runs: dict[str, list] = {name: [] for name in modes}
    texts: dict[str, list] = {}
    load = [os.getloadavg()[0]]
    for rep in range(args.reps):
        for name, fn in modes.items():
            timing: dict = {}
            t0, c0 = time.perf_counter(), time.process_time()
            texts[name] = [g for kind in calls for g in fn(kind, timing)]
            runs[name].append((time.perf_counter() - t0, time.process_time() - c0, timing))
            load.append(os.getloadavg()[0])
            print(f"rep {rep + 1}/{args.reps} {name}: {runs[name][-1][0]:.1f} s", flush=True)
    ours, lib = (texts[n] for n in modes)
    differ = [i for i, (a, c) in enumerate(zip(ours, lib)) if a.text != c.text]
    result_modes = {}
    for name, reps in runs.items():
        tokens = sum(g.n_tokens for g in texts[name])
        wall, cpu = statistics.median(r[0] for r in reps), statistics.median(r[1] for r in reps)
        r = {"generated_tokens": tokens, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
             "tokens_per_s": round(tokens / wall, 1), "tokens_per_cpu_s": round(tokens / cpu, 1)}
        if reps[0][2]:
            overhead = statistics.median(t["start_s"] + t["stop_s"] for _, _, t in reps)
            r |= {"manager_start_stop_seconds": round(overhead, 2),
                  "tokens_per_s_without_start_stop": round(tokens / (wall - overhead), 1)}
        result_modes[name] = r
    o, l_ = result_modes.values()
    result = {
        "model": "SmolLM2-135M-Instruct + random LoRA r16 (attention, MLP, lm_head), folded", "base_id": base.id,
        "device": "cpu", "dtype": "float32", "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "prompts": {kind: len(m) for kind, m in calls.items()},
        "max_new_tokens": budgets, "reps": args.reps, "batch_size": b,
        "load_average_1m": {"min": round(min(load), 2), "max": round(max(load), 2)}, "modes": result_modes,
        "identical_texts": len(ours) - len(differ), "texts": len(ours),
        "differing_rows": [{"ours": ours[i].text, "library": lib[i].text} for i in differ[:5]],
        "library_vs_ours": {"tokens_per_s": round(l_["tokens_per_s"] / o["tokens_per_s"], 3),
                            "tokens_per_cpu_s": round(l_["tokens_per_cpu_s"] / o["tokens_per_cpu_s"], 3)},
    }
    table = Table(title=f"sstm.generate vs transformers continuous batching, {sum(map(len, calls.values()))} prompts, "
                        f"{torch.get_num_threads()} threads, median of {args.reps}")
    for c in ("mode", "seconds", "cpu-s", "tokens", "tokens/s", "tokens/cpu-s", "manager start+stop s"):
        table.add_column(c, justify="left" if c == "mode" else "right")
    for name, r in result_modes.items():
        table.add_row(name, f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}", str(r["generated_tokens"]),
                      f"{r['tokens_per_s']:.1f}", f"{r['tokens_per_cpu_s']:.1f}",
                      f"{r.get('manager_start_stop_seconds', '-')}")
    Console(width=200).print(table)
    print(f"identical texts: {result['identical_texts']}/{result['texts']}; library / ours: "
          f"{result['library_vs_ours']}; load {min(load):.2f}-{max(load):.2f}")
    write_result(result, args.out)


# --------------------------------------------------------------------------- bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="budget of the document questions")
    ap.add_argument("--max-context-tokens", type=int, default=512, help="longest jailbreak template and document")
    ap.add_argument("--batch-sizes", default="32,64", help="slot batch sizes measured with shared prefixes")
    ap.add_argument("--reference-every", type=int, default=4,
                    help="one at a time runs every n-th prompt of each call (its tokens/s is the reference)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions; modes alternate within each")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; use 1 on a CPU shared with other jobs)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/generate.json (generate_library.json with --library)")
    ap.add_argument("--library", action="store_true",
                    help="only sstm.generate beside transformers' continuous batching (generate_batch)")
    args = ap.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / ("generate_library.json" if args.library else "generate.json")

    if args.threads:
        torch.set_num_threads(args.threads)
    home = Path(os.environ.get("SSTM_HOME") or ROOT / "bench" / ".home")
    home.mkdir(parents=True, exist_ok=True)
    base = resolve_base(Registry(home), "smollm2-135m")
    device = pick_device(args.device)
    peft, tok = load_base(base, device=device)
    peft = with_random_lora(peft, seed=0)
    folded = fold_lora(with_random_lora(load_base(base, device=device)[0], seed=0))
    refusal, docs = prompts(args.prompts, tok, args.max_context_tokens)
    lengths = [len(p) for p in encode_prompts(tok, refusal + docs)]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    new = args.max_new_tokens
    budgets = {"refusal": SUITES["jailbreak"].new_tokens(new), "document": new}  # as eval gives them
    calls = {"refusal": refusal, "document": docs}
    first = min(sizes)
    if args.library:
        return library_bench(args, folded, tok, calls, budgets, base)

    def slots(b: int, share: bool, budget=budgets, group: bool = False):
        return lambda kind: generate(folded, tok, calls[kind], batch_size=b, max_new_tokens=budget[kind],
                                     share_prefix=share, group_prefill=group)

    every = args.reference_every
    modes = {"one at a time": lambda kind: [
        current_generate(peft, tok, [m], batch_size=1, max_new_tokens=budgets[kind])[0] for m in calls[kind][::every]],
             f"before: slots ({first}), {new} new tokens everywhere": slots(first, False, dict.fromkeys(calls, new)),
             f"slots ({first})": slots(first, False)}
    modes[f"slots ({first}), shared prefix"] = slots(first, True)
    for b in sizes:
        modes[f"slots ({b}), shared prefix, grouped prefill"] = slots(b, True, group=True)

    generate(peft, tok, refusal[:2], batch_size=2, max_new_tokens=4)  # warm-up (allocations, kernels)
    generate(folded, tok, refusal[:2], batch_size=2, max_new_tokens=4)
    load = [os.getloadavg()[0]]
    runs: dict[str, list[tuple[float, float, float, dict]]] = {name: [] for name in modes}
    texts: dict[str, list] = {}
    prefill = time_prefill()
    for rep in range(args.reps):
        for name, fn in modes.items():
            t0, c0 = time.perf_counter(), time.process_time()
            prefill[0] = 0.0
            texts[name], per_kind = [], {}
            for kind in calls:
                k0 = time.process_time()
                texts[name] += fn(kind)
                per_kind[kind] = time.process_time() - k0
            runs[name].append((time.perf_counter() - t0, time.process_time() - c0, prefill[0], per_kind))
            load.append(os.getloadavg()[0])
            print(f"rep {rep + 1}/{args.reps} {name}: {runs[name][-1][0]:.1f} s", flush=True)
    config = peft.get_base_model().config
    ceilings = {b: linear_ceiling(config, b) for b in sorted({1, *sizes})}
    job = job_ceiling(folded, [encode_prompts(tok, m) for m in calls.values()],
                      sum(g.n_tokens for g in texts[f"slots ({first}), shared prefix, grouped prefill"]),
                      linear_ceiling(config, 512), ceilings[first])

    ref = texts["one at a time"]  # the prompts of each call at positions 0, every, 2 * every, ...
    shown = [i for kind in calls for i in range(len(calls[kind]))]
    picked = [j for j, i in enumerate(shown) if i % every == 0]
    ref_tps = None
    result_modes = {}
    for name, reps in runs.items():
        tokens = sum(g.n_tokens for g in texts[name])
        wall = statistics.median(w for w, _, _, _ in reps)
        cpu = statistics.median(c for _, c, _, _ in reps)
        pre = statistics.median(p for _, _, p, _ in reps)
        r = {"generated_tokens": tokens, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
             "tokens_per_s": round(tokens / wall, 1), "tokens_per_cpu_s": round(tokens / cpu, 1),
             "rows_per_s": round(len(texts[name]) / wall, 3), "rows_per_cpu_s": round(len(texts[name]) / cpu, 3),
             "cpu_seconds_per_row": {
                 kind: round(statistics.median(k[kind] for *_, k in reps)
                             / len(calls[kind][::every] if name == "one at a time" else calls[kind]), 3)
                 for kind in calls},
             "seconds_per_rep": [round(w, 2) for w, _, _, _ in reps],
             "prefill_cpu_seconds": round(pre, 2) if pre else None,
             "decode_tokens_per_cpu_s": round(tokens / (cpu - pre), 1) if pre else None,
             "identical_to_one_at_a_time": None if name.startswith("before") else
             sum(a.text == b.text for a, b in zip(texts[name] if name == "one at a time" else
                                                  [texts[name][j] for j in picked], ref))}
        if ref_tps is None:
            ref_tps = (r["tokens_per_s"], r["tokens_per_cpu_s"], r["rows_per_cpu_s"])
        r["speedup"] = round(r["tokens_per_s"] / ref_tps[0], 2)
        r["speedup_cpu"] = round(r["tokens_per_cpu_s"] / ref_tps[1], 2)
        r["rows_speedup_cpu"] = round(r["rows_per_cpu_s"] / ref_tps[2], 2)
        result_modes[name] = r
    result = {
        "model": "SmolLM2-135M-Instruct + random LoRA r16 (attention, MLP, lm_head), folded but one at a time",
        "base_id": base.id, "device": device, "dtype": "float32", "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "prompts": {kind: len(m) for kind, m in calls.items()}, "reference_every": every, "max_new_tokens": budgets,
        "prompt_tokens_min": min(lengths), "prompt_tokens_median": int(statistics.median(lengths)),
        "prompt_tokens_max": max(lengths), "reps": args.reps,
        "load_average_1m": {"min": round(min(load), 2), "max": round(max(load), 2)},
        "modes": result_modes,
        "linear_ceiling": list(ceilings.values()),
        "job_ceiling": job,
        "target": {"speedup": 4.0, "tokens_per_s": 200},
    }

    table = Table(title=f"greedy generation, SmolLM2-135M + LoRA, {len(refusal)} refusal-suite prompts at "
                        f"{budgets['refusal']} new tokens + {len(docs)} document questions at {new} "
                        f"({min(lengths)}-{max(lengths)} prompt tokens, median {result['prompt_tokens_median']}), "
                        f"{device}, {torch.get_num_threads()} threads, median of {args.reps}")
    for c in ("mode", "seconds", "tokens", "tokens/s", "x one-at-a-time", "tokens/cpu-s", "x (cpu)",
              "rows/cpu-s", "x (rows, cpu)", "cpu-s/row refusal", "cpu-s/row document", "identical"):
        table.add_column(c, justify="left" if c == "mode" else "right")
    for name, r in result_modes.items():
        same = r["identical_to_one_at_a_time"]
        table.add_row(name, f"{r['seconds']:.1f}", str(r["generated_tokens"]), f"{r['tokens_per_s']:.1f}",
                      f"{r['speedup']:.2f}", f"{r['tokens_per_cpu_s']:.1f}", f"{r['speedup_cpu']:.2f}",
                      f"{r['rows_per_cpu_s']:.3f}", f"{r['rows_speedup_cpu']:.2f}",
                      f"{r['cpu_seconds_per_row']['refusal']:.2f}", f"{r['cpu_seconds_per_row']['document']:.2f}",
                      "-" if same is None else f"{same}/{len(ref)}")
    console = Console(width=220)
    console.print(table)
    console.print("matmul-only ceiling (F.linear on the model's decode shapes): " + ", ".join(
        f"batch {c['batch']}: {c['tokens_per_s']:.0f} tokens/s ({c['gflop_per_s']:.0f} GFLOP/s)"
        for c in ceilings.values()))
    console.print(f"whole-job ceiling (prefill of {job['prefill_tokens']} unshared prompt tokens at "
                  f"{job['prefill_gflop_per_s']:.0f} GFLOP/s + {job['generated_tokens']} tokens at the batch-{first} "
                  f"decode ceiling): {job['seconds']:.1f} s, {job['tokens_per_s']:.0f} tokens/s")
    console.print("slot modes, CPU seconds in prefill: " + ", ".join(
        f"{name}: {r['prefill_cpu_seconds']:.1f} of {r['cpu_seconds']:.1f} (decode alone {r['decode_tokens_per_cpu_s']:.1f} "
        "tokens/cpu-s)" for name, r in result_modes.items() if r["prefill_cpu_seconds"]))
    console.print(f"load average (1 min) during the run: {min(load):.2f}-{max(load):.2f}")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
