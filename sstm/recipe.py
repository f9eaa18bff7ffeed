"""Run recipes: `sstm run`'s settings as a YAML file.

* ``sstm run --config FILE`` reads one: its keys are the fields of
  :class:`sstm.pipeline.RunConfig` (the options of `sstm run`, with ``suites`` for
  ``--suite``), each checked against the field's type; an unknown key is an error naming
  it. Options given on the command line override the file (``--quick`` and
  ``--skip-training`` when given).
* ``sstm run --print-config`` prints the *effective* recipe and does no work: every key,
  each with the value the run would use -- what was given, else the preset's, else the
  stage config's default, read back from the run's plan (``RunConfig.plan``), so
  there is no second copy of a default here. ``null`` stays where it is a choice of its
  own (``w``: each merge's w calibrated), where the stages differ (``device``: each
  stage's own) or where nothing applies (``epochs`` with ``skip_training``).
  Run from that file, the plan is the same.
* after a run, :func:`record` writes that effective recipe to
  ``$SSTM_HOME/runs/<sha256[:12] of the recipe>.yaml``, with the compared models and
  evals, the sstm version and git commit in comments, so ``sstm run --config`` reruns it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from sstm import __version__
from sstm.errors import SSTMError, read_yaml
from sstm.pipeline import SUBJECT, Plan, RunConfig
from sstm.provenance import git_state
from sstm.registry import write_whole

RUNS_DIR = "runs"
KEYS = tuple(f.name for f in fields(RunConfig) if f.init)


def _merge_values(p: Plan, name: str) -> list:
    """The parameter `name` of every merge of the plan that has it (a field of the method's config)."""
    return [getattr(c, name) for m, c in p.merges if name in m.params]


def _stages(p: Plan) -> list:
    """The configs with a device and a dtype: training, the merges with a data pass (Fishers, ...), evaluation."""
    return [*p.train.values(), *(c for m, c in p.merges if m.needs), p.eval]


# key -> the values the run's stage configs hold for it (the effective value is theirs when they agree).
# Keys not here are used as given; `w` among them: null is not a default but "calibrate each merge's w".
PLANNED: dict[str, Callable[[Plan], list]] = {
    "k": lambda p: _merge_values(p, "k")[:1],  # SST-Merge's (its controls run at the first k)
    "epochs": lambda p: [c.epochs for c in p.train.values()],
    "samples": lambda p: [c.samples for c in p.train.values()],
    "fisher_samples": lambda p: _merge_values(p, "samples"),
    "eval_samples": lambda p: [p.eval.samples],
    "suites": lambda p: [p.eval.suites],
    "baselines": lambda p: [[m.name for m, _ in p.merges if m.name != SUBJECT]],  # the plan's other methods
    "controls": lambda p: [any(m.name == SUBJECT and m.control(vars(c)) for m, c in p.merges)],
    "density": lambda p: _merge_values(p, "density"),
    "judge": lambda p: [p.eval.judge],
    "device": lambda p: [c.device for c in _stages(p)],
    "dtype": lambda p: [c.dtype for c in _stages(p)],
}


def _plain(v: Any) -> Any:
    """YAML-ready: tuples as lists."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def effective(cfg: RunConfig) -> dict[str, Any]:
    """Every recipe key with the value the run of `cfg` uses (see the module docstring)."""
    out = {}
    for key in KEYS:
        value = getattr(cfg, key)
        if key in PLANNED:
            seen = [_plain(v) for v in PLANNED[key](cfg.plan)]
            value = seen[0] if seen and all(v == seen[0] for v in seen) else None
        out[key] = _plain(value)
    return out


def dump(cfg: RunConfig, comments: Sequence[str] = ()) -> str:
    """The effective recipe as YAML, under a comment header."""
    head = [f"sstm run recipe (sstm {__version__}): rerun with `sstm run --config FILE`;",
            "null: w calibrated per merge, device each stage's own default, other keys not used.", *comments]
    body = yaml.safe_dump(effective(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True)
    return "".join(f"# {line}\n" for line in head) + body


# --------------------------------------------------------------------------- reading


def _check(key: str, value: Any, hint: Any, where: str) -> Any:
    """`value` as the RunConfig field `key` of type `hint` takes it (a list as a tuple, a scalar as a 1-tuple)."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    kind = next(a for a in args if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        raise SSTMError(f"{where}: {key} must not be empty")
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return tuple(_one(key, v, item, where) for v in (value if isinstance(value, list) else [value]))
    return _one(key, value, kind, where)


def _one(key: str, v: Any, kind: type, where: str) -> Any:
    ok = {bool: isinstance(v, bool),
          int: isinstance(v, int) and not isinstance(v, bool),
          float: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: isinstance(v, (str, int)) and not isinstance(v, bool)}[kind]
    if not ok:
        raise SSTMError(f"{where}: {key}: expected {'a list of ' if isinstance(v, list) else ''}"
                        f"{'true or false' if kind is bool else kind.__name__}, got {v!r}")
    if kind is float and not math.isfinite(v):  # YAML's .inf / .nan: refused here, not when params are hashed
        raise SSTMError(f"{where}: {key}: expected a finite number, got {v!r}")
    return kind(v)


def load(path: Path) -> dict[str, Any]:
    """The keys a recipe file sets, checked (an unknown key, a wrong type: one line naming it)."""
    path = Path(path).expanduser()
    data = read_yaml(path, "--config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SSTMError(f"--config {path}: expected a mapping of recipe keys, got a {type(data).__name__}")
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise SSTMError(f"--config {path}: unknown key {unknown[0]!r} (keys: {', '.join(KEYS)})")
    hints = typing.get_type_hints(RunConfig)
    return {k: _check(k, v, hints[k], f"--config {path}") for k, v in data.items()}


def config(path: Path | None, given: dict[str, Any]) -> RunConfig:
    """The run's config: the recipe file's keys (if any), overridden by the options given on the command line."""
    return RunConfig(**((load(path) if path is not None else {}) | given))


# --------------------------------------------------------------------------- recording


def record(home: Path, cfg: RunConfig, models: Sequence[str], evals: Sequence[str]) -> Path:
    """Write the effective recipe of a finished run to ``home/runs/<sha12>.yaml`` (atomically); its path."""
    body = dump(cfg)
    sha = hashlib.sha256(body.encode()).hexdigest()[:12]
    git = git_state()
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    notes = [f"run {now} by sstm {__version__} at git {git['git_commit']}{' (dirty)' * bool(git['git_dirty'])}",
             f"models: {' '.join(m[:12] for m in models)}", f"evals: {' '.join(e[:12] for e in evals)}"]
    path = Path(home) / RUNS_DIR / f"{sha}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_whole(path, lambda tmp: tmp.write_text(dump(cfg, notes), encoding="utf-8"))
