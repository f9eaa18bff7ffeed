"""How the embedded data is split: the near-duplicate clustering and the held-out shares that the safety
data (:mod:`sstm.data.safety`) and the over-refusal set (:mod:`sstm.data.benign`) share.

Two texts are joined into one cluster when the Jaccard similarity of their shingles reaches a threshold
(:mod:`sstm.data.similarity`); whole clusters are assigned to a part, so no part holds a near-copy of
another's text. Templates use word 8-grams, requests (a sentence long: one swapped word removes 3 of a
sentence's ~8 word 3-grams but few of its character 5-grams) character 5-grams. The thresholds were chosen
by reading the pairs around them: above them, edited copies of one template (DAN variants: "Developer
Mode" / "APOPHIS Mode") and one request with another name or group swapped in ("... at Google?" /
"... at Huawei?").

Held out, a share of the clusters goes to train/held-out by a stable hash (``EVAL_FRACTION_*``); the
held-out clusters are split again, by another hash, into the calibration part (``CALIB_FRACTION``: what
calibration and tuning read) and the test part ``eval`` (what results report).
"""

from __future__ import annotations

from sstm.data.similarity import Shingling, assign_clusters

EVAL_FRACTION_REQUESTS = 0.25
EVAL_FRACTION_TEMPLATES = 0.3
# Share of the held-out requests and templates (by cluster) that form the calibration part: what
# calibration and the safety-data sweep tune on; the rest ("eval") is the test part results report.
CALIB_FRACTION = 0.3
TEMPLATE_SHINGLES, TEMPLATE_THRESHOLD = Shingling("word", 8), 0.1
REQUEST_SHINGLES, REQUEST_THRESHOLD = Shingling("char", 5), 0.3

# The split's settings, recorded in the source params of the embedded safety datasets.
SPLIT = {"requests": {"shingles": str(REQUEST_SHINGLES), "jaccard": REQUEST_THRESHOLD,
                      "eval_fraction": EVAL_FRACTION_REQUESTS},
         "templates": {"shingles": str(TEMPLATE_SHINGLES), "jaccard": TEMPLATE_THRESHOLD,
                       "eval_fraction": EVAL_FRACTION_TEMPLATES},
         "calib_fraction": CALIB_FRACTION}


def calib_parts(clusters: dict[str, str], salt: str) -> dict[str, str]:
    """id -> 'calib' | 'eval' (the test part) of held-out items, whole clusters at a time: ``CALIB_FRACTION``
    of them (in the order of a stable hash of `salt` and the cluster) to the calibration part."""
    return {i: "calib" if s == "eval" else "eval" for i, s in assign_clusters(clusters, salt, CALIB_FRACTION).items()}


def held_out_parts(clusters: dict[str, str], salt: str, eval_fraction: float) -> dict[str, str]:
    """id -> 'train' | 'calib' | 'eval': whole clusters to train or held out (`eval_fraction` of the items),
    then the held-out clusters to the calibration part or the test part (:func:`calib_parts`)."""
    side = assign_clusters(clusters, salt, eval_fraction)
    held = {i: c for i, c in clusters.items() if side[i] == "eval"}
    return side | calib_parts(held, salt + "-calib")
