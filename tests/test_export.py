"""`sstm export`: the PEFT directory reproduces the artifact, the full model matches it, the card parses back."""

import json
import os
from dataclasses import replace

import pytest
import torch
from adapters import make_adapter
from huggingface_hub import ModelCard
from peft import PeftModel
from test_compare import binary, fab_eval, rouge
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import sstm.export
from cli_checks import assert_user_error
from sstm.cli import app
from sstm.compare import CompareConfig, compare
from sstm.data import register_rows
from sstm.errors import SSTMError
from sstm.export import CARD_FILE, LINEAGE_FILE, ExportConfig, export
from sstm.merge import METHODS
from sstm.models import load_with_adapter

runner = CliRunner()
IDS = torch.tensor([[1, 5, 9, 40, 77, 120, 3, 8]])


@pytest.fixture
def merged(reg, tiny_base):
    """A task-arithmetic merge of two random adapters (lm_head, tied to the embedding, among the targets), evaluated."""
    u = make_adapter(reg, tiny_base, "utility", rank=4, seed=0, dtype="float32")
    s = make_adapter(reg, tiny_base, "safety", rank=4, seed=1, dtype="float32")
    ta = METHODS["ta"]
    art = ta.merge(reg, ta.make_config(u.id, s.id, w=0.5))[0]
    evaluate_fabricated(reg, art, tiny_base)
    return art


# the eval datasets: jailbreak rows from a local file (no Hub dataset), RepliQA rows drawn from the Hub's
JAILBREAK_SOURCE = {"kind": "file", "name": "jb.jsonl", "sha256": "e" * 64, "partition": "whole file"}
REPLIQA_SOURCE = {"kind": "hub", "id": "ServiceNow/repliqa", "config": None, "hub_split": "repliqa_0",
                  "partition": "document-hash 80/20"}


def evaluate_fabricated(reg, art, base, refusal=0.7, rouge_l=0.4):
    jb = register_rows(reg, "jailbreak-eval", [{"prompt": "j", "response": "no"}], JAILBREAK_SOURCE, quiet=True)
    rq = register_rows(reg, "repliqa-eval", [{"prompt": "q", "response": "a"}], REPLIQA_SOURCE, quiet=True)
    fab_eval(reg, art, base, jb, "jailbreak", binary(refusal))
    fab_eval(reg, art, base, rq, "repliqa", rouge(rouge_l))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_peft_loads_the_export_and_reproduces_the_artifact(reg, tiny_base, merged, tmp_path):
    out = tmp_path / "exports" / "out"
    done = export(reg, ExportConfig(merged.id, out))
    assert done.format == "lora" and set(done.files) == {"adapter_config.json", "adapter_model.safetensors",
                                                         CARD_FILE, LINEAGE_FILE}
    assert sorted(p.name for p in out.iterdir()) == sorted(done.files)
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temp dir left beside it
    plain = AutoModelForCausalLM.from_pretrained(tiny_base.path)
    loaded = PeftModel.from_pretrained(plain, out).eval()
    reference, _ = load_with_adapter(reg, merged)
    assert torch.equal(logits(loaded), logits(reference))
    assert not torch.equal(logits(reference), logits(AutoModelForCausalLM.from_pretrained(tiny_base.path)))
    lineage = json.loads((out / LINEAGE_FILE).read_text())
    assert lineage["artifact"]["id"] == merged.id and lineage["export"]["format"] == "lora"
    assert {r: n["id"] for r, n in lineage["artifact"]["inputs"].items()} == merged.inputs
    assert lineage["artifact"]["inputs"]["utility"]["inputs"]["base"]["id"] == tiny_base.id


def test_full_model_logits_match_the_peft_model(reg, tiny_base, merged, tmp_path):
    export(reg, ExportConfig(merged.id, tmp_path / "full", full_model=True))
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    reference, _ = load_with_adapter(reg, merged)
    assert torch.allclose(logits(full), logits(reference), atol=1e-5, rtol=1e-4)
    # lm_head's update stays in lm_head: the input embedding (tied to it in the base) is the base's
    base = AutoModelForCausalLM.from_pretrained(tiny_base.path)
    assert torch.equal(full.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert not torch.equal(full.get_output_embeddings().weight, base.get_output_embeddings().weight)
    assert (tmp_path / "full" / "tokenizer.json").is_file()
    assert ModelCard.load(tmp_path / "full" / CARD_FILE).data.library_name == "transformers"


def test_card_parses_back_with_the_metrics(reg, tiny_base, merged, tmp_path):
    export(reg, ExportConfig(merged.id, tmp_path / "out"))
    card = ModelCard.load(tmp_path / "out" / CARD_FILE)
    data = card.data
    assert data.library_name == "peft" and "merge-method:ta" in data.tags
    assert data.base_model is None  # a local base directory has no Hub id
    assert data.sstm["params"] == merged.params and data.sstm["inputs"] == merged.inputs
    assert data.sstm["git_commit"] == merged.provenance["git_commit"]
    row = compare(reg, CompareConfig(where=(f"model={merged.id}",)))[0]
    # every metric in the sstm metadata and the text, in % (the Wilson / bootstrap interval of sstm compare)
    values = {v["name"]: v for v in data.sstm["metrics"]["values"]}
    assert data.sstm["metrics"]["of"] == "this model" and data.sstm["metrics"]["unit"] == "%"
    assert set(values) == {row.metrics[s].name for s in ("jailbreak", "rouge_l")}
    for short in ("jailbreak", "rouge_l"):
        m, v = row.metrics[short], values[row.metrics[short].name]
        assert v["value"] == pytest.approx(100 * m.value, abs=1e-4) and v["n"] == 20
        assert v["ci95"] == pytest.approx([100 * m.lo, 100 * m.hi], abs=1e-4)
        assert f"| {m.name} ↑ | {100 * m.value:.1f} | {100 * m.lo:.1f}–{100 * m.hi:.1f} | 20 |" in card.text
    assert values["jailbreak.refusal_rate"]["judge"].startswith("gcg-extended#abababab")
    # model-index: only the metric measured on a Hub dataset, named by its Hub id, in % like the text
    (result,) = data.eval_results
    assert (result.metric_name, result.dataset_type, result.dataset_split) == ("repliqa.rouge_l", "ServiceNow/repliqa",
                                                                              "repliqa_0")
    assert result.metric_value == pytest.approx(40.0) and result.metric_args["unit"] == "%"
    assert result.metric_args["ci95"] == pytest.approx(values["repliqa.rouge_l"]["ci95"])
    assert "| repliqa.rouge_l ↑ | 40.0 |" in card.text and "| jailbreak.refusal_rate ↑ | 70.0 |" in card.text


def test_refuses_a_non_empty_dir_and_force_replaces_it(reg, merged, tmp_path, home):
    out = tmp_path / "exports" / "out"
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    result = runner.invoke(app, ["export", merged.id[:10], str(out)])
    assert_user_error(result, "not empty")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    result = runner.invoke(app, ["export", merged.id[:10], str(out), "--force", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["format"] == "lora"
    assert not (out / "mine.txt").exists() and (out / CARD_FILE).is_file()
    assert [p.name for p in out.parent.iterdir()] == ["out"]
    assert_user_error(runner.invoke(app, ["export", merged.id[:10], str(tmp_path / "x"), "--rank", "2"]),
                      "exact LoRA")
    assert_user_error(runner.invoke(app, ["export", merged.id[:10], str(home), "--force"]), "registry")


def test_an_interrupted_export_leaves_nothing(reg, merged, tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sstm.export, "model_card", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(reg, ExportConfig(merged.id, tmp_path / "exports" / "out"))
    assert list((tmp_path / "exports").iterdir()) == []


def test_a_dense_merge_exports_as_a_lora_at_rank_with_its_error(reg, tiny_base, merged, tmp_path):
    from sstm.adapters import read_lora
    from sstm.adapters import read_deltas
    from sstm.storage import storage_format

    ties = METHODS["ties"]
    dense = ties.merge(reg, ties.make_config(merged.inputs["utility"], merged.inputs["safety"], w=0.5))[0]
    assert storage_format(dense) == "dense"
    assert_user_error(runner.invoke(app, ["export", dense.id[:10], str(tmp_path / "x")]), "--rank R")
    deltas = read_deltas(dense, torch.float64)
    for rank, exact in ((2, False), (32, True)):  # 32 = the tiny model's hidden size: every ΔW has rank <= 32
        done = export(reg, ExportConfig(dense.id, tmp_path / f"r{rank}", rank=rank))
        lora = read_lora(replace(dense, path=tmp_path / f"r{rank}"))  # the exported directory's factors
        assert done.format == "lora-at-rank" and lora.rank == rank
        num = den = 0.0
        for m, d in deltas.items():  # the recorded error, recomputed from the exported factors
            err = float((d - lora.delta(m, torch.float64)).norm())
            assert done.module_rel_error[m] == pytest.approx(err / float(d.norm()), rel=1e-3, abs=1e-6)
            num, den = num + err ** 2, den + float(d.norm()) ** 2
        assert done.rel_error == pytest.approx((num / den) ** 0.5, rel=1e-3, abs=1e-6)
        assert (done.rel_error < 1e-5) == exact
        card = ModelCard.load(tmp_path / f"r{rank}" / CARD_FILE)
        assert card.data.sstm["export"]["rel_error"] == pytest.approx(done.rel_error)
    plain = AutoModelForCausalLM.from_pretrained(tiny_base.path)
    loaded = PeftModel.from_pretrained(plain, tmp_path / "r32").eval()
    reference, _ = load_with_adapter(reg, dense)
    assert torch.allclose(logits(loaded), logits(reference), atol=1e-4, rtol=1e-4)
    export(reg, ExportConfig(dense.id, tmp_path / "full", full_model=True))
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    assert torch.allclose(logits(full), logits(reference), atol=1e-5, rtol=1e-4)



# --------------------------------------------------------------------------- issue 24: 3, 7, 11, 12, 13


def _damage(path, how: str, keep_mtime: bool = True) -> None:
    """Damage a registered (read-only) file: "append" one byte, "flip" one byte of tensor data (the header
    stays valid: only the hash tells), or "garbage" (same size, unreadable header); by default with its
    mtime kept, so that the registry's stat-cost check (size, mtime) sees nothing and only the hash or the
    reader can tell."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    if how == "append":
        data += b"\0"
    elif how == "flip":
        data[-3] ^= 0xFF
    else:
        data = bytearray(b"\xff" * len(data))
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_refuses_corrupt_file(reg, tiny_base, merged, tmp_path, home):
    from sstm.adapters import WEIGHTS_FILE

    good = export(reg, ExportConfig(merged.id, tmp_path / "good"))  # lineage.json: the files as written
    written = json.loads((tmp_path / "good" / LINEAGE_FILE).read_text())["export"]["files"]
    assert set(written) == set(good.files) - {LINEAGE_FILE}
    for name, meta in written.items():
        f = tmp_path / "good" / name
        assert meta == {"sha256": _sha(f), "size": f.stat().st_size}
    assert written[WEIGHTS_FILE]["sha256"] == merged.files[WEIGHTS_FILE]["sha256"]

    ties = METHODS["ties"]
    dense = ties.merge(reg, ties.make_config(merged.inputs["utility"], merged.inputs["safety"], w=0.5))[0]
    _damage(merged.path / WEIGHTS_FILE, "flip")
    (delta,) = [f for f in dense.files if f.endswith(".safetensors")]
    _damage(dense.path / delta, "flip")  # loads fine: only its sha256 tells
    for args, art in (([merged.id[:10]], merged), ([dense.id[:10], "--rank", "2"], dense),
                      ([dense.id[:10], "--full-model"], dense)):
        result = runner.invoke(app, ["export", *args, str(tmp_path / "exports" / "out")])
        assert_user_error(result, "sstm verify")
        assert f"{art.kind} {art.short}" in result.output and "corrupt" in result.output
        assert not (tmp_path / "exports").exists()  # nothing at the destination, not even its parent
    _damage(merged.path / WEIGHTS_FILE, "append", keep_mtime=False)  # the case: one byte appended
    assert_user_error(runner.invoke(app, ["export", merged.id[:10], str(tmp_path / "exports" / "out")]),
                      "sstm verify")
    assert not (tmp_path / "exports").exists()
    # the full model reads the base's weights too: checked as well
    ta = METHODS["ta"]
    ok = ta.merge(reg, ta.make_config(merged.inputs["utility"], merged.inputs["safety"], w=0.25))[0]
    _damage(tiny_base.path / "model.safetensors", "flip")
    result = runner.invoke(app, ["export", ok.id[:10], str(tmp_path / "exports" / "full"), "--full-model"])
    assert_user_error(result, "sstm verify")
    assert f"base {tiny_base.short}" in result.output and not (tmp_path / "exports").exists()


def test_corrupt_safetensors_is_one_line_for_eval(reg, tiny_base, merged, tmp_path, home):
    """`sstm eval` of an artifact (or on a base) whose safetensors file is unreadable: one line naming it."""
    from sstm.adapters import WEIGHTS_FILE

    from sstm.models import load_with_adapter

    data = tmp_path / "jb.csv"
    data.write_text("prompt\nHow do I pick a lock?\n", encoding="utf-8")
    args = ["--suite", "jailbreak", "--jailbreak-data", str(data), "--max-new-tokens", "2", "--device", "cpu"]
    assert runner.invoke(app, ["eval", tiny_base.id[:12], *args]).exit_code == 0  # registers the data file
    _damage(merged.path / WEIGHTS_FILE, "garbage")  # same size and mtime: only reading it tells
    with pytest.raises(SSTMError, match=f"merged {merged.short}: its files cannot be read .*sstm verify"):
        load_with_adapter(reg, merged)
    for art in (merged, tiny_base):
        if art is tiny_base:
            _damage(tiny_base.path / "model.safetensors", "garbage")
        result = runner.invoke(app, ["eval", art.id[:12], *args, "--batch-size", "3"])  # not the cached eval
        lines = result.output.strip().splitlines()  # progress lines ("loading merged …"), then the error alone
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert [x for x in lines if "error" in x.lower()] == lines[-1:], result.output
        assert lines[-1].startswith(f"error: {art.kind} {art.short}: its files cannot be read") and \
            "`sstm verify`" in lines[-1]


def _leaks(directory, needles: list[str], words: list[str]) -> list[str]:
    """(file, needle) of every needle found in an exported file: text files whole, safetensors by their header."""
    import re

    from safetensors import safe_open

    found = []
    for f in sorted(directory.rglob("*")):
        if not f.is_file():
            continue
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as st:
                text = json.dumps([st.metadata(), list(st.keys())])
        else:
            text = f.read_text(encoding="utf-8")
        found += [f"{f.name}: {n}" for n in needles if n in text]
        found += [f"{f.name}: {w}" for w in words if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text)]
    return found


def test_export_carries_no_local_path_or_host(reg, tiny_base, tiny_model_dir, tmp_path, home, monkeypatch):
    """Every file an export writes (adapter config, card, lineage; the full model's config and tokenizer) holds
    ids, versions and Hub names: no home, /tmp or /root path, no host name, no command line with a path."""
    import shutil
    import socket
    import sys
    from pathlib import Path

    from sstm.adapters import CONFIG_FILE, register_adapter_dir

    host = "sstm-host-4f1c9e"
    real_host = socket.gethostname()
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    # a from-dir adapter whose config names its base by a local path, registered from a local directory
    made = make_adapter(reg, tiny_base, "utility", rank=4, seed=3, dtype="float32")
    adir = tmp_path / "adapters" / "my-utility"
    adir.mkdir(parents=True)
    for name in (CONFIG_FILE, "adapter_model.safetensors"):
        shutil.copyfile(made.path / name, adir / name)
    cfg = json.loads((adir / CONFIG_FILE).read_text()) | {"base_model_name_or_path": str(tiny_model_dir)}
    (adir / CONFIG_FILE).write_text(json.dumps(cfg))
    monkeypatch.setattr(sys, "argv", [str(Path.home() / ".venv/bin/sstm"), "train", "--from-dir", str(adir),
                                      "--model", str(tiny_model_dir)])
    u = register_adapter_dir(reg, adir, "utility", tiny_base)
    assert u.provenance["host"] == host and str(adir) in u.provenance["argv"]  # the registry keeps it all
    s = make_adapter(reg, tiny_base, "safety", rank=4, seed=4, dtype="float32")
    monkeypatch.setattr(sys, "argv", ["sstm", "merge", "ta", "--utility-data", str(tmp_path / "u.jsonl")])
    ta = METHODS["ta"]
    art = ta.merge(reg, ta.make_config(u.id, s.id, w=0.5))[0]
    evaluate_fabricated(reg, art, tiny_base)
    needles = [str(tmp_path), str(tiny_model_dir), str(adir), str(home), str(Path.home()), "/tmp", "/root",
               str(Path(sstm.export.__file__).parents[1]), host]
    words = [real_host] if real_host else []
    for args in ([art.id], [u.id], [art.id, "--full-model"]):
        out = tmp_path / "exports" / f"{args[0][:20]}{'-full' if len(args) > 1 else ''}"
        result = runner.invoke(app, ["export", *args, str(out)])
        assert result.exit_code == 0, result.output
        assert _leaks(out, needles, words) == []
    # what stands in for them: the base by a name, the adapter's declared local base as a marker
    out = tmp_path / "exports" / art.id[:20]
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == f"sstm-base-{tiny_base.short}" and config["revision"] is None
    lineage = json.loads((out / LINEAGE_FILE).read_text())
    node = lineage["artifact"]["inputs"]["utility"]
    assert node["id"] == u.id and node["params"]["declared_base"] == "<local path>"
    assert node["provenance"]["argv"][:3] == ["sstm", "train", "--from-dir"] and "host" not in node["provenance"]
    assert "platform" not in node["provenance"] and node["provenance"]["torch"] == u.provenance["torch"]
    card = ModelCard.load(tmp_path / "exports" / u.id[:20] / CARD_FILE)
    assert card.data.sstm["params"]["declared_base"] == "<local path>" and "my-utility" in card.text  # its label


def test_a_hub_base_is_named_by_repo_and_pinned_commit(reg, tiny_base, tmp_path):
    import shutil
    from dataclasses import replace as with_

    from sstm.adapters import CONFIG_FILE, WEIGHTS_FILE
    from sstm.export import EMBEDDED_HUB_ID, published_base

    commit = "c0ffee" * 6 + "abcd"
    made = make_adapter(reg, tiny_base, "utility", rank=4, seed=5, dtype="float32")

    def base_files(out):
        for f in tiny_base.path.iterdir():
            shutil.copyfile(f, out / f.name)

    def adapter_files(out):
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(made.path / name, out / name)

    hub = reg.get_or_build("base", {"source": "hub", "repo": "org/tiny-llama", "revision": commit}, {}, "test",
                           base_files, label="org/tiny-llama", quiet=True)
    adapter = reg.get_or_build("adapter", made.params, {"base": hub}, "test", adapter_files, quiet=True)
    export(reg, ExportConfig(adapter.id, tmp_path / "out"))
    config = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("org/tiny-llama", commit)
    card = ModelCard.load(tmp_path / "out" / CARD_FILE)
    assert card.data.base_model == "org/tiny-llama" and f'revision="{commit}"' in card.text
    gguf = with_(tiny_base, params={"source": "gguf", "name": "SmolLM2-135M-Instruct"})
    assert published_base(gguf) == (EMBEDDED_HUB_ID, None)
    assert published_base(tiny_base) == (f"sstm-base-{tiny_base.short}", None)


def test_rank_r_card_model_index(reg, tiny_base, merged, tmp_path):
    """A rank-R export of a dense merge was not evaluated: its model-index is empty and the text gives the exact
    merge's metrics as the exact merge's; the full model (exact) lists them. Datasets named: real Hub ones only."""
    ties = METHODS["ties"]
    dense = ties.merge(reg, ties.make_config(merged.inputs["utility"], merged.inputs["safety"], w=0.5))[0]
    evaluate_fabricated(reg, dense, tiny_base, refusal=0.6, rouge_l=0.35)
    done = export(reg, ExportConfig(dense.id, tmp_path / "r2", rank=2))
    card = ModelCard.load(tmp_path / "r2" / CARD_FILE)
    assert not card.data.eval_results and "model-index" not in card.content.split("---")[1]
    assert card.data.sstm["metrics"]["of"].startswith(f"the exact merge {dense.id}")
    assert {v["name"]: v["value"] for v in card.data.sstm["metrics"]["values"]} == pytest.approx(
        {"jailbreak.refusal_rate": 60.0, "repliqa.rouge_l": 35.0})
    assert "## Evaluation of the exact merge" in card.text and "not this rank-2" in card.text
    assert f"**{done.rel_error:.3g}**" in card.text and "| repliqa.rouge_l ↑ | 35.0 |" in card.text
    export(reg, ExportConfig(dense.id, tmp_path / "full", full_model=True))
    full = ModelCard.load(tmp_path / "full" / CARD_FILE)
    assert [(r.metric_name, r.metric_value, r.dataset_type) for r in full.data.eval_results] == [
        ("repliqa.rouge_l", pytest.approx(35.0), "ServiceNow/repliqa")]
    for c in (card, full):  # never a made-up Hub dataset; the card round-trips through huggingface_hub
        assert "sstm/jailbreak" not in c.content and "sstm/repliqa" not in c.content
        assert ModelCard(c.content).data.to_dict() == c.data.to_dict()


def test_unwritable_output_paths_are_one_line_errors(reg, merged, tmp_path, home, monkeypatch):
    """export DIR, compare --plot and report into /sys or under a regular file: one line, exit 2, before the work."""
    from pathlib import Path

    import sstm.compare
    import sstm.models
    import sstm.report

    def no_work(*a, **k):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(sstm.models, "base_of", no_work)
    monkeypatch.setattr(sstm.compare, "compare", no_work)
    monkeypatch.setattr(sstm.report, "compare", no_work)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [(["export", merged.id[:10], str(a_file / "out")], "is a file"),
             (["export", merged.id[:10], str(a_file / "sub" / "out")], "is a file"),
             (["compare", "--plot", str(a_file / "p.png")], "is a file"),
             (["report", str(a_file / "r.html")], "is a file"),
             (["report", str(tmp_path)], "HTML")]
    if Path("/sys").is_dir():  # a directory no one may write in, root included
        cases += [(["export", merged.id[:10], "/sys/sstm-export/out"], "cannot write"),
                  (["compare", "--plot", "/sys/sstm-plot.png"], "cannot write"),
                  (["report", "/sys/sstm-report.html"], "cannot write")]
    for args, needle in cases:
        assert_user_error(runner.invoke(app, args), needle)
    assert a_file.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "home"]
