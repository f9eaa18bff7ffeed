"""`sstm export`: the PEFT directory reproduces the artifact, the full model matches it, the card parses back."""

import json
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
    jb = register_rows(reg, "jailbreak-eval", [{"prompt": "j", "response": "no"}], {"kind": "test"}, quiet=True)
    rq = register_rows(reg, "repliqa-eval", [{"prompt": "q", "response": "a"}], {"kind": "test"}, quiet=True)
    fab_eval(reg, art, tiny_base, jb, "jailbreak", binary(0.7))
    fab_eval(reg, art, tiny_base, rq, "repliqa", rouge(0.4))
    return art


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
    got = {r.metric_name: r for r in data.eval_results}
    assert set(got) == {row.metrics[s].name for s in ("jailbreak", "rouge_l")}
    for short in ("jailbreak", "rouge_l"):
        m, r = row.metrics[short], got[row.metrics[short].name]
        assert r.metric_value == pytest.approx(m.value, abs=1e-6)
        assert r.metric_args["ci95"] == pytest.approx([m.lo, m.hi], abs=1e-6)
        assert r.metric_args["n"] == 20
    assert got["jailbreak.refusal_rate"].metric_value == pytest.approx(0.7)
    assert got["jailbreak.refusal_rate"].metric_args["judge"].startswith("gcg-extended#abababab")
    assert "| repliqa.rouge_l ↑ | 40.0 |" in card.text


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
    from sstm.merge.storage import read_deltas, storage_format

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
