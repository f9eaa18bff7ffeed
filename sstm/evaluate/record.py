"""The eval record: the two files of an `eval` artifact. This module is their only writer and reader.

``metrics.json``::

    {"suite": NAME, "status": "ok", "n": SAMPLES, <metric name>: VALUE, ..., "stats": {...}}
    {"suite": NAME, "status": "unavailable", "reason": WHY}   # the suite had no data here

with the metric names the suite declares (``jailbreak.refusal_rate``, ...; see
:mod:`sstm.evaluate.suites`) and ``stats`` the suite's diagnostics (mean new tokens, ...).

``samples.jsonl``: one JSON object per sample in dataset order, with ``id`` (row index
in the dataset), ``prompt``, ``response``, ``reference``, ``score`` (a float in [0, 1];
every metric is the mean of its samples' scores) and ``refused`` (bool, or null where
the refusal judge does not apply), plus suite fields (``answerable``, ``new_tokens``,
``stop``: why generation stopped -- ``end of turn``, ``max_new_tokens`` or ``verdict decided`` (early
exit: the response is what was generated up to where its verdict could no longer change), ...).
Empty for an unavailable suite.

A registered eval whose file is missing or not valid JSON is an error naming the
artifact (never read as "ok").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sstm.errors import SSTMError
from sstm.registry import Artifact

METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.jsonl"
STATUSES = ("ok", "unavailable")
_FIELDS = ("suite", "status", "reason", "n", "stats")  # every other key of metrics.json is a metric


@dataclass(frozen=True)
class Summary:
    """The content of ``metrics.json``."""

    suite: str
    status: str  # "ok" | "unavailable"
    reason: str | None = None  # why unavailable
    n: int | None = None  # samples scored (ok only)
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        if self.status != "ok":
            return {"suite": self.suite, "status": self.status, "reason": self.reason}
        return {"suite": self.suite, "status": "ok", "n": self.n, **self.metrics, "stats": self.stats}


def write(out: Path, summary: Summary, samples: list[dict]) -> None:
    """Write both files of an eval into the build directory `out`."""
    (out / METRICS_FILE).write_text(json.dumps(summary.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with open(out / SAMPLES_FILE, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")


def _file(art: Artifact, name: str) -> Path:
    path = art.path / name
    if not path.is_file():
        raise SSTMError(f"eval {art.short}: {name} is missing from {art.path} (see `sstm verify`)")
    return path


def read_summary(art: Artifact) -> Summary:
    """The ``metrics.json`` of a registered eval."""
    path = _file(art, METRICS_FILE)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SSTMError(f"eval {art.short}: {path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("status") not in STATUSES or not isinstance(meta.get("suite"), str):
        raise SSTMError(f"eval {art.short}: {path} has no suite or no status ({' or '.join(STATUSES)})")
    return Summary(meta["suite"], meta["status"], meta.get("reason"), meta.get("n"),
                   {k: v for k, v in meta.items() if k not in _FIELDS}, meta.get("stats") or {})


def read_samples(art: Artifact) -> list[dict]:
    """The per-sample records (``samples.jsonl``) of a registered eval."""
    path = _file(art, SAMPLES_FILE)
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SSTMError(f"eval {art.short}: {path}:{i}: not valid JSON ({e})") from None
    return rows
