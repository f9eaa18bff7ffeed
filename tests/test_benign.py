"""The embedded benign prompts, read from sstm/data/benign_prompts.jsonl: the rows (so the dataset ids) are those
of the Python literals they replaced, and the file ships with the package."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

from sstm.data import benign as bn
from sstm.data.rows import rows_sha256

ROOT = Path(__file__).resolve().parents[1]

# Computed from the literal tuples of sstm/data/benign.py before the move (rows_sha256 of each list):
# the dataset params hash these rows, so equal hashes mean unchanged benign dataset ids.
EMBEDDED_ROWS = (301, "9a286ceea5f10e5b26e91443c08d5b07c4850f9d4170a99963a1ad7fdab25d9d")
PART_ROWS = {"calib": (90, "34f383483f4e2173374220cab9d7d7b29f7d4ece99bd22ef20395922593d1f47"),
             "eval": (211, "36ced5725dd4d7cf2e11ccefe014f95114f7b0ae8682d3af23686f99821e8622")}
TRAIN_PROMPTS = (404, "3db32b551adbcb8d16ef83d11030e76d0c2f5e153a986f35fe0d2ee6465a75be")  # helpful_split's
TRAIN_TOPICS = "c0bda2b97cd9582de176840fa9a301ae179e79a84faa079aa5d66888528f7240"


def test_embedded_rows_unchanged_by_the_move():
    rows = bn.embedded_rows()
    assert (len(rows), rows_sha256(rows)) == EMBEDDED_ROWS
    for split, want in PART_ROWS.items():
        part, _ = bn.benign_rows(split=split)
        assert (len(part), rows_sha256(part)) == want


def test_training_prompts_unchanged_by_the_move():
    train = bn.train_prompts()
    assert (len(train), rows_sha256({"category": c, "prompt": p} for c, p in train)) == TRAIN_PROMPTS
    assert rows_sha256({"group": g, "topic": t, "prompt": p} for g, t, p in bn.items(bn.TRAIN)) == TRAIN_TOPICS
    assert (bn.TRAIN_LOOKALIKE, bn.TRAIN_PLAIN) == (bn.TRAIN["lookalike"], bn.TRAIN["plain"])


def test_prompts_file_is_the_module_data_and_package_data():
    path = Path(bn.__file__).with_name(bn.PROMPTS_FILE)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"part", "group", "topic", "prompt"} for r in lines)
    assert [(r["group"], r["topic"], r["prompt"]) for r in lines if r["part"] == "eval"] == bn.items(bn.EVAL_PROMPTS)
    assert [(r["group"], r["topic"], r["prompt"]) for r in lines if r["part"] == "train"] == bn.items(bn.TRAIN)
    assert list(bn.EVAL_PROMPTS) == list(bn.CATEGORIES)
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sstm"]
    relative = path.relative_to(ROOT / "sstm").as_posix()
    assert any(fnmatch.fnmatch(relative, g) for g in globs), f"{relative} is not in the package data {globs}"
