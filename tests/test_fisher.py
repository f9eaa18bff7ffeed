"""Fisher in core coordinates: hooks vs torch.func per-sample gradients, registry identity, errors, CLI."""

import dataclasses
import json

import pytest
import torch
from adapters import make_adapter, register_dataset
from torch.func import functional_call, grad, vmap
from typer.testing import CliRunner

from sstm.cli import app
from sstm.data import load_rows
from sstm.errors import SSTMError
from sstm.chat import encode_rows
from sstm.fisher import (FisherConfig, _batches, accumulate_fisher, core_basis, core_bases, fisher,
                         load_fisher)
from sstm.adapters import read_lora
from sstm.models import load_with_adapter

MAX_LEN = 256


@pytest.fixture
def pair(reg, tiny_base):
    """(utility, safety) random-init float64 adapters of ranks 4 and 3 on the tiny model."""
    return make_adapter(reg, tiny_base, "utility", rank=4, seed=0), make_adapter(reg, tiny_base, "safety", rank=3, seed=1)


def reference_fisher(reg, adapter, basis, row_ids, batch_size=64):
    """F from torch.func: vmap(grad(L_i)) w.r.t. core matrices M_m, W_m -> W_m + Q_B M_m Q_Aᵀ at M = 0."""
    model, tok = load_with_adapter(reg, adapter, dtype="float64")
    rows = load_rows(reg.get(adapter.inputs["data"]))
    examples, dropped = encode_rows(tok, [rows[i] for i in row_ids], MAX_LEN)
    assert not dropped
    batch = next(_batches(examples, batch_size, tok.pad_token_id))
    bases = core_bases(read_lora(basis))
    params = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False)}
    weight = {m: f"base_model.model.{m}.base_layer.weight" for m in bases}
    assert set(weight.values()) <= set(params)

    def loss(Ms, ids, mask, labels):
        p = dict(params)
        for m, (QB, QA) in bases.items():
            p[weight[m]] = params[weight[m]] + QB @ Ms[m] @ QA.T
        causal = torch.tril(torch.ones(ids.shape[0], ids.shape[0], dtype=torch.bool)) & mask.bool()[None, :]
        logits = functional_call(model, p, (), {"input_ids": ids[None], "attention_mask": causal[None, None],
                                                "use_cache": False}, tie_weights=False).logits[0]
        # mean NLL over this sample's response tokens
        return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100)

    zeros = {m: torch.zeros(QB.shape[1], QA.shape[1], dtype=torch.float64) for m, (QB, QA) in bases.items()}
    G = vmap(grad(loss), in_dims=(None, 0, 0, 0))(zeros, batch["input_ids"], batch["attention_mask"], batch["labels"])
    n = batch["input_ids"].shape[0]
    return {m: g.reshape(n, -1).T @ g.reshape(n, -1) / n for m, g in G.items()}, n


def rel_err(F, R):
    num = sum(float((F[m] - R[m]).square().sum()) for m in R)
    den = sum(float(R[m].square().sum()) for m in R)
    return (num / den) ** 0.5


def test_hook_fisher_equals_torch_func_reference(reg, pair):
    u, s = pair
    art = fisher(reg, FisherConfig(adapter=u.id, role="utility", basis=s.id, samples=6, batch_size=4,
                                   max_len=MAX_LEN, dtype="float64"))
    F = load_fisher(art)
    summary = json.loads((art.path / "summary.json").read_text())
    R, n = reference_fisher(reg, u, s, summary["rows"])
    assert n == summary["samples_used"] == art.metrics["samples_used"] == 6
    assert set(F) == set(R) and len(F) == 2 * 7 + 1
    assert all(f.shape == (9, 9) for f in F.values())  # r_s² × r_s² in the SAFETY adapter's coordinates
    assert rel_err(F, R) < 1e-9
    for f in F.values():  # a Fisher is symmetric PSD and not zero here
        assert torch.allclose(f, f.T) and torch.linalg.eigvalsh(f).min() > -1e-12
    assert all(float(torch.trace(f)) > 0 for f in F.values())


def test_safety_fisher_independent_of_batching(reg, pair):
    """Per-sample gradients are exact under right padding: batch 1 and batch 5 give the same F_s."""
    _, s = pair
    one = load_fisher(fisher(reg, FisherConfig(adapter=s.id, role="safety", samples=5, batch_size=1,
                                               max_len=MAX_LEN, dtype="float64")))
    five = load_fisher(fisher(reg, FisherConfig(adapter=s.id, role="safety", samples=5, batch_size=5,
                                                max_len=MAX_LEN, dtype="float64")))
    assert rel_err(five, one) < 1e-10


def test_fisher_pass_leaves_a_trainable_model_untouched(reg, pair):
    """No parameter gradients are computed, requires_grad and the train/eval mode are restored."""
    u, s = pair
    model, tok = load_with_adapter(reg, u, dtype="float64", trainable=True)
    model.train()
    examples, _ = encode_rows(tok, load_rows(reg.get(u.inputs["data"]))[:2], MAX_LEN)
    S, n = accumulate_fisher(model, _batches(examples, 2, tok.pad_token_id), core_bases(read_lora(s)))
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    assert n == 2 and model.training and lora and all(p.requires_grad and p.grad is None for p in lora)
    assert all(float(torch.trace(f)) > 0 for f in S.values())


def test_core_basis_is_orthonormal_and_exact(pair):
    _, s = pair
    f = read_lora(s)
    m = "model.layers.0.mlp.down_proj"
    QB, QA = core_basis(f.B[m], f.A[m])
    eye = torch.eye(f.rank, dtype=torch.float64)
    assert torch.allclose(QB.T @ QB, eye) and torch.allclose(QA.T @ QA, eye)
    delta = f.delta(m)
    assert torch.allclose(QB @ (QB.T @ delta @ QA) @ QA.T, delta, atol=1e-12)  # ΔW_s = Q_B M_s Q_Aᵀ exactly


def test_fisher_identity_and_lineage(reg, tiny_base, pair, monkeypatch):
    u, s = pair
    cfg = FisherConfig(adapter=u.id, role="utility", basis=s.id, samples=3, batch_size=2, max_len=MAX_LEN)
    a = fisher(reg, cfg)
    assert a.inputs == {"base": tiny_base.id, "adapter": u.id, "basis": s.id, "data": u.inputs["data"]}
    assert a.params["role"] == "utility" and a.params["samples"] == 3 and a.params["batch_size"] == 2
    import sstm.fisher as fmod

    def boom(*a, **k):
        raise AssertionError("recomputed a cached Fisher")

    monkeypatch.setattr(fmod, "accumulate_fisher", boom)
    assert fisher(reg, cfg).id == a.id  # same inputs -> cache hit, no recomputation
    monkeypatch.undo()
    other_basis = make_adapter(reg, tiny_base, "safety", rank=3, seed=7)
    b = fisher(reg, FisherConfig(adapter=u.id, role="utility", basis=other_basis.id, samples=3, batch_size=2,
                                 max_len=MAX_LEN))
    assert b.id != a.id  # a utility Fisher depends on the safety basis
    data = register_dataset(reg, "safety")
    c = fisher(reg, FisherConfig(adapter=u.id, role="utility", basis=s.id, samples=3, batch_size=2,
                                 max_len=MAX_LEN, data=data.id))
    assert c.id != a.id and c.inputs["data"] == data.id
    big = fisher(reg, FisherConfig(adapter=s.id, role="safety", samples=1000, batch_size=8, max_len=MAX_LEN))
    assert big.params["samples"] == len(load_rows(reg.get(s.inputs["data"])))  # capped at the dataset size


@pytest.mark.parametrize("change, message", [({"role": "both"}, "--role"), ({"samples": 0}, "--samples"),
                                             ({"batch_size": 0}, "--batch-size"), ({"max_len": 0}, "--max-len")])
def test_fisher_config_validates_itself(change, message):
    with pytest.raises(SSTMError, match=message):
        dataclasses.replace(FisherConfig(adapter="ab", role="utility", basis="cd", samples=2), **change)


@pytest.mark.parametrize("change, message", [({"basis": None}, "--basis"), ({"data": "ffffffffffff"}, "no such file, directory or dataset artifact")])
def test_fisher_bad_config(reg, pair, change, message):
    u, s = pair
    cfg = dataclasses.replace(FisherConfig(adapter=u.id, role="utility", basis=s.id, samples=2), **change)
    with pytest.raises(SSTMError, match=message):
        fisher(reg, cfg)
    assert reg.list("fisher") == []


def test_fisher_safety_basis_must_be_itself_and_same_base(reg, pair, tmp_path):
    from tiny import save_tiny

    from sstm.models import resolve_base

    u, s = pair
    with pytest.raises(SSTMError, match="basis must be the safety adapter"):
        fisher(reg, FisherConfig(adapter=s.id, role="safety", basis=u.id))
    other_base = resolve_base(reg, str(save_tiny(tmp_path / "other", seed=1)))
    foreign = make_adapter(reg, other_base, "safety", rank=3, seed=1)
    with pytest.raises(SSTMError, match="different base models"):
        fisher(reg, FisherConfig(adapter=u.id, role="utility", basis=foreign.id))


def test_fisher_cli(reg, pair):
    u, s = pair
    runner = CliRunner()
    res = runner.invoke(app, ["fisher", "--adapter", s.short, "--role", "safety", "--samples", "2", "--max-len", str(MAX_LEN)])
    assert res.exit_code == 0, res.output
    art = reg.list("fisher")[0]
    assert art.id in res.output and art.params["samples"] == 2
    bad = runner.invoke(app, ["fisher", "--adapter", u.short, "--role", "utility"])
    assert bad.exit_code == 2 and "--basis" in bad.output and len(bad.output.strip().splitlines()) == 1
    bad = runner.invoke(app, ["fisher", "--adapter", "0123abcd", "--role", "safety"])
    assert bad.exit_code == 2 and "no artifact" in bad.output and "Traceback" not in bad.output
