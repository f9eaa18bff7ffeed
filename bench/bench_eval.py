"""One model's eval at the standard preset: seconds per suite by prefill mode, against the whole-job ceiling.

What `sstm run` spends per model: the generation suites of the standard preset (``presets.STANDARD``:
200 rows per suite, 64 new tokens for ROUGE-L, the refusal suites at their judged budget, documents and
templates of at most 512 tokens), on the embedded SmolLM2 base, its rows drawn as the eval stage draws
them (``sstm.evaluate.data.sample_indices``), run through each suite's own ``records`` with
``sstm.generate.generate`` in these modes, alternated:

  one forward per prompt (B)  shared prefixes, every prompt's rest prefilled by its own forward
  grouped prefill (B)         ``sstm.generate``'s default: short rests prefilled together

with B rows decoded together (``--batch-sizes``, default ``EvalConfig.batch_size``), and the whole
job's ceiling on this CPU (``bench_generate.job_ceiling``: the prompt tokens not shared with the
previous prompt at the matmul rate of 512-row shapes, the generated tokens at the decode ceiling of
the first batch size). Texts of all modes are compared. Nothing is registered: the datasets are read
(and built on first use) from the registry home, the evals are not stored.

    .venv/bin/python bench/bench_eval.py [--samples 200] [--batch-sizes 32,64] [--threads 2] [--reps 1]

``--early-exit``: instead, the default path with early exit off and on (refusal rows stop once the judge's
verdict is decided, :mod:`sstm.evaluate.suites`), alternated, on the base model and on each ``--model``
(a registered adapter or merge, e.g. the safety adapter: a model that refuses); verdicts compared row by
row (they must be identical; ROUGE-L's texts too) and the seconds' ratio per suite and for the whole
eval; writes bench/results/eval_early_exit.json.

Prints a table and writes bench/results/eval.json. Uses $SSTM_HOME, or bench/.home, as registry home.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import write_result  # noqa: E402
from bench_generate import job_ceiling, linear_ceiling  # noqa: E402

import sstm.generate  # noqa: E402
import sstm.data as sd  # noqa: E402
from sstm.evaluate.config import EvalConfig  # noqa: E402
from sstm.evaluate.data import DataContext  # noqa: E402
from sstm.evaluate.judge import load_judge  # noqa: E402
from sstm.evaluate.suites import Settings, get_suites  # noqa: E402
from sstm.models import load_base, resolve_base  # noqa: E402
from sstm.presets import STANDARD  # noqa: E402
from sstm.registry import Registry  # noqa: E402

SUITES = ("jailbreak", "repliqa", "overrefusal")  # the generation suites (MMLU scores one token per row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=STANDARD.eval["samples"], help="rows per suite")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--batch-sizes", default=str(EvalConfig.batch_size),
                    help="comma-separated; grouped prefill at each, one forward per prompt at the first")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--early-exit", action="store_true", help="early exit off vs on (see above)")
    ap.add_argument("--model", action="append", default=[], help="with --early-exit: also this adapter/merge id")
    args = ap.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / ("eval_early_exit.json" if args.early_exit else "eval.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    home = Path(os.environ.get("SSTM_HOME") or ROOT / "bench" / ".home")
    home.mkdir(parents=True, exist_ok=True)
    reg = Registry(home)
    model, tok = load_base(resolve_base(reg, "smollm2-135m"), device=torch.device("cpu"))
    ctx = DataContext(STANDARD.eval["max_context_tokens"], lambda: tok)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    settings = Settings(sizes[0], STANDARD.eval["max_new_tokens"], STANDARD.eval["max_context_tokens"], load_judge())
    suites = get_suites(list(SUITES))
    rows = {}
    for s in suites:
        all_rows = sd.load_rows(s.data.default(reg, ctx))
        rows[s.name] = [(i, all_rows[i]) for i in sd.sample_indices(len(all_rows), args.samples, 0,
                                                                      s.data.groups(all_rows))]

    if args.early_exit:
        return early_exit_bench(args, reg, model, tok, settings, suites, rows)
    calls: dict[str, list] = {}  # suite -> (token ids of its prompts, generated tokens), from the last run
    real = sstm.generate.generate

    def mode(group: bool, batch: int):
        def run(suite):
            def spy(model_, tok_, messages, **kw):
                gens = real(model_, tok_, messages, group_prefill=group, **kw)
                calls[suite.name] = (sstm.generate.encode_prompts(tok_, messages), sum(g.n_tokens for g in gens))
                return gens
            sstm.generate.generate = spy
            try:
                return suite.records(model, tok, rows[suite.name], replace(settings.of(suite), batch_size=batch), None)
            finally:
                sstm.generate.generate = real
        return run

    modes = {f"one forward per prompt ({sizes[0]})": mode(False, sizes[0])}
    modes |= {f"grouped prefill ({b})": mode(True, b) for b in sizes}
    real(model, tok, ["Hi"], batch_size=1, max_new_tokens=2)  # warm-up
    seconds = {name: {s.name: [] for s in suites} for name in modes}
    texts: dict[str, list[str]] = {}
    for rep in range(args.reps):
        for name, run in modes.items():
            texts[name] = []
            for s in suites:
                t0 = time.perf_counter()
                texts[name] += [x["response"] for x in run(s)]
                seconds[name][s.name].append(time.perf_counter() - t0)
                print(f"rep {rep + 1}/{args.reps} {name} {s.name}: {seconds[name][s.name][-1]:.1f} s", flush=True)

    rate, decode = linear_ceiling(model.config, 512), linear_ceiling(model.config, sizes[0])
    ceiling = {name: job_ceiling(model, [ids], gen, rate, decode) for name, (ids, gen) in calls.items()}
    per_mode = {name: {suite: round(statistics.median(v), 1) for suite, v in per.items()}
                for name, per in seconds.items()}
    result = {
        "model": "SmolLM2-135M-Instruct (base)", "device": "cpu", "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "samples": args.samples, "reps": args.reps,
        "rows": {name: len(r) for name, r in rows.items()},
        "seconds": {name: per | {"total": round(sum(per.values()), 1)} for name, per in per_mode.items()},
        "ceiling_seconds": {name: c["seconds"] for name, c in ceiling.items()}
        | {"total": round(sum(c["seconds"] for c in ceiling.values()), 1)},
        "ceiling": ceiling,
        "identical_texts": sum(len(set(t)) == 1 for t in zip(*texts.values())), "texts": len(next(iter(texts.values()))),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    table = Table(title=f"eval of the base model at the standard preset ({args.samples} rows per suite), "
                        f"{torch.get_num_threads()} threads, seconds (median of {args.reps})")
    table.add_column("mode")
    for s in [*SUITES, "total"]:
        table.add_column(s, justify="right")
    for name, per in result["seconds"].items():
        table.add_row(name, *(f"{per[s]:.1f}" for s in [*SUITES, "total"]))
    table.add_row("whole-job ceiling", *(f"{result['ceiling_seconds'][s]:.1f}" for s in [*SUITES, "total"]))
    Console(width=160).print(table)
    print(f"identical texts across modes: {result['identical_texts']}/{result['texts']}")
    write_result(result, args.out)


def early_exit_bench(args, reg, base_model, tok, settings, suites, rows) -> None:
    """Each model's eval (every suite) with early exit off and on, alternated; seconds, tokens, verdicts."""
    from sstm.evaluate.stage import fold_lora
    from sstm.models import load_with_adapter

    models = {"base": base_model}
    for ref in args.model:
        art = reg.get(ref)
        models[f"{art.kind} {art.short} {art.label}".strip()] = fold_lora(load_with_adapter(reg, art, "cpu")[0])
    judged = list(suites)  # the refusal suites, and ROUGE-L's (stops at EOS or the budget either way)
    result: dict = {"samples": args.samples, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "batch_size": settings.batch_size, "reps": args.reps,
                    "models": {}}
    load = [os.getloadavg()[0]]
    for name, model in models.items():
        sec = {m: {s.name: [] for s in judged} for m in ("off", "on")}
        out: dict = {}
        for rep in range(args.reps):
            for mode in ("off", "on"):
                s_ = replace(settings, early_exit=mode == "on")
                for s in judged:
                    t0 = time.perf_counter()
                    out[mode, s.name] = s.records(model, tok, rows[s.name], s_.of(s), None)
                    sec[mode][s.name].append(time.perf_counter() - t0)
                    load.append(os.getloadavg()[0])
                    print(f"{name} rep {rep + 1} early exit {mode} {s.name}: {sec[mode][s.name][-1]:.1f} s", flush=True)
        per = {}
        for s in judged:
            off, on = out["off", s.name], out["on", s.name]
            t_off, t_on = (statistics.median(sec[m][s.name]) for m in ("off", "on"))
            per[s.name] = {
                "seconds_off": round(t_off, 1), "seconds_on": round(t_on, 1), "speedup": round(t_off / t_on, 2),
                "tokens_off": sum(x["new_tokens"] for x in off), "tokens_on": sum(x["new_tokens"] for x in on),
                "rows": len(on), "prefixes": sum(b["response"].startswith(a["response"]) for a, b in zip(on, off))}
            if s.judged:
                per[s.name] |= {
                    "refusal_rate": round(statistics.fmean(x["score"] for x in on), 3),
                    "identical_verdicts": sum(a["refused"] == b["refused"] for a, b in zip(off, on)),
                    "stopped_verdict_decided": sum(x.get("stop") == "verdict decided" for x in on)}
            else:
                per[s.name] |= {"identical_texts": sum(a["response"] == b["response"] for a, b in zip(off, on))}

        def speedup(names, per=per):
            return round(sum(per[n]["seconds_off"] for n in names) / sum(per[n]["seconds_on"] for n in names), 2)

        result["models"][name] = {"suites": per,
                                  "speedup_refusal_suites": speedup([s.name for s in judged if s.judged]),
                                  "speedup_whole_eval": speedup(list(per))}
    result["load_average_1m"] = {"min": round(min(load), 2), "max": round(max(load), 2)}
    table = Table(title=f"early exit off vs on, {args.samples} rows per suite, {torch.get_num_threads()} threads")
    for c in ("model", "suite", "s off", "s on", "x", "tokens off", "tokens on", "refusal", "same verdicts"):
        table.add_column(c, justify="left" if c in ("model", "suite") else "right")
    for name, m in result["models"].items():
        for suite, p in m["suites"].items():
            table.add_row(name, suite, f"{p['seconds_off']:.1f}", f"{p['seconds_on']:.1f}", f"{p['speedup']:.2f}",
                          str(p["tokens_off"]), str(p["tokens_on"]),
                          f"{p['refusal_rate']:.0%}" if "refusal_rate" in p else "-",
                          f"{p.get('identical_verdicts', p.get('identical_texts'))}/{p['rows']}")
        table.add_row(name, "whole eval", "", "", f"{m['speedup_whole_eval']:.2f}", "", "", "", "")
    Console(width=160).print(table)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
