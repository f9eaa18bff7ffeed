"""Scoring one trial of `sstm search` on calibration data: the scores (:class:`Score`), what a trial asks of a scorer
(:class:`Scorer`), the sequential interval test that reads a refusal split block by block (:func:`read`), and the
scorer on the registry (:class:`RegistryScorer`: merges and evals as artifacts, in ``sstm calibrate``'s blocks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sstm.calibrate import (
    CONFIDENCE,
    CalibrateConfig,
    jailbreak_calibration,
    probe_blocks,
)
from sstm.calibrate import interval as clopper_pearson
from sstm.data.benign import benign_split
from sstm.data.utility import utility_split
from sstm.errors import SSTMError
from sstm.evaluate import evaluate
from sstm.evaluate.record import read_samples
from sstm.merge import METHODS
from sstm.search.config import SearchConfig
from sstm.search.space import merge_settings

REFUSAL, OVERREFUSAL, ROUGE = "jailbreak.refusal_rate", "overrefusal.refusal_rate", "repliqa.rouge_l"


@dataclass(frozen=True)
class Score:
    """A rate or mean on n prompts (`scores`: the per-prompt values), and the eval artifact it came from."""

    value: float
    n: int
    scores: tuple[float, ...] = ()
    eval: str = ""


class Scorer(Protocol):
    """What a trial needs: a merge (its id) and its calibration scores; the refusal splits block by block,
    lazily (a block is evaluated when the iterator reaches it)."""

    def merge(self, method: str, params: dict) -> str: ...
    def refusal(self, model: str) -> Iterator[Score]: ...
    def overrefusal(self, model: str) -> Iterator[Score]: ...
    def rouge(self, model: str) -> Score: ...


def whole(blocks: Iterable[Score]) -> Score:
    """The blocks of a split read in full, as one score."""
    scores = tuple(x for b in blocks for x in b.scores)
    if not scores:
        raise SSTMError("search: no calibration prompts to evaluate")
    return Score(sum(scores) / len(scores), len(scores), scores)


def interval(scores) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a rate, at sstm calibrate's confidence."""
    return clopper_pearson(int(sum(scores)), len(scores), CONFIDENCE)


def read(blocks: Iterator[Score], excluded: Callable[[float, float], bool] | None) -> tuple[Score, bool]:
    """(the rate over the blocks read, whether the constraint was excluded): stop after the first block whose
    interval of the rate so far is `excluded` (None: read every block)."""
    seen: list[Score] = []
    for b in blocks:
        seen.append(b)
        if excluded is not None and excluded(*interval([x for s in seen for x in s.scores])):
            return whole(seen), True
    return whole(seen), False


# --------------------------------------------------------------------------- on the registry


class RegistryScorer:
    """Merges and calibration evals as registry artifacts (cache hits on a rerun). The refusal splits are
    read in ``sstm calibrate``'s blocks (the same datasets, so the same evals as its probes)."""

    def __init__(self, reg, cfg: SearchConfig):
        self.reg, self.cfg = reg, cfg
        self._data: dict[str, Any] = {}
        self._blocks: dict[str, list] = {}

    def data(self, model) -> dict:
        """suite -> the calibration dataset: safety/calib, benign/calib, utility/calib."""
        if not self._data:
            ccfg = CalibrateConfig(self.cfg.methods[0], None, eval=self.cfg.eval)
            self._data = {"jailbreak": jailbreak_calibration(self.reg, ccfg, model),
                          "overrefusal": benign_split(self.reg, split="calib"),
                          "repliqa": utility_split(self.reg, "calib")}
        return self._data

    def blocks(self, model, suite: str) -> list:
        """The block datasets of a refusal split (:func:`sstm.calibrate.probe_blocks`)."""
        if suite not in self._blocks:
            self._blocks[suite] = probe_blocks(self.reg, self.data(model)[suite], self.cfg.calib_samples,
                                          self.cfg.eval.sample_seed)
        return self._blocks[suite]

    def merge(self, method: str, params: dict) -> str:
        """The trial's merge: the method's base config (``SearchConfig.base``; else its defaults) with the drawn
        w, ℓ and knobs."""
        m = METHODS[method]
        settings = merge_settings(method, params)
        w, lw = settings.pop("w"), settings.pop("layer_weights")
        seed = self.cfg.seed if m.seeded else None
        base = self.cfg.base.get(method)
        if base is None:
            config = m.make_config(self.cfg.utility, self.cfg.safety, w=w, seed=seed, layer_weights=lw, **settings)
        else:  # dataclasses.replace runs the config's checks again
            config = replace(base, utility=self.cfg.utility, safety=self.cfg.safety, w=w, seed=seed,
                             **({"layer_weights": lw} if lw is not None else {}), **settings)
        (art,) = m.merge(self.reg, config)
        return art.id

    def _eval(self, art, suite: str, data, samples: int | None) -> Score:
        (ev,) = evaluate(self.reg, replace(self.cfg.eval, model=art, suites=(suite,), samples=samples,
                                           data={suite: data}))
        metric = {"jailbreak": REFUSAL, "overrefusal": OVERREFUSAL, "repliqa": ROUGE}[suite]
        if metric not in ev.metrics:
            raise SSTMError(f"calibration eval {ev.short} of {art.short} has no {metric}")
        scores = tuple(float(x["score"]) for x in read_samples(ev))
        return Score(float(ev.metrics[metric]), int(ev.params["samples"]), scores, ev.id)

    def _read(self, model: str, suite: str) -> Iterator[Score]:
        art = self.reg.get(model)
        for block in self.blocks(art, suite):
            yield self._eval(art, suite, block, None)

    def refusal(self, model: str) -> Iterator[Score]:
        return self._read(model, "jailbreak")

    def overrefusal(self, model: str) -> Iterator[Score]:
        return self._read(model, "overrefusal")

    def rouge(self, model: str) -> Score:
        art = self.reg.get(model)
        return self._eval(art, "repliqa", self.data(art)["repliqa"], self.cfg.calib_samples)
