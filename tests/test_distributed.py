"""Stages under torch.distributed (sstm.distributed): 2 CPU processes with gloo on the tiny model.

One job of two processes, started with the environment ``torchrun`` gives its workers
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), trains an adapter, computes a
Fisher, evaluates two suites, then computes another Fisher with rank 1 crashing after its
share (the test seam ``SSTM_TEST_CRASH_RANK``). The tests compare its artifacts with the same
stages run in this process on a second registry.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from adapters import make_adapter  # noqa: E402

from sstm.data import register_rows  # noqa: E402
from sstm.distributed import CRASH_RANK  # noqa: E402
from sstm.evaluate import EvalConfig, evaluate  # noqa: E402
from sstm.evaluate.record import read_samples, read_summary  # noqa: E402
from sstm.fisher import FisherConfig, fisher, load_fisher  # noqa: E402
from sstm.models import resolve_base  # noqa: E402
from sstm.registry import Registry  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*tied layer is part of the adapter"),
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]

BENIGN = [{"prompt": p, "response": "", "category": c} for p, c in [
    ("Tell me about the weather in the capital.", "weather"), ("How do I bake bread?", "cooking"),
    ("What year was the company founded?", "facts"), ("Describe the quick brown fox.", "facts"),
    ("Answer the question using the document.", "reading")]]
MMLU = [{"prompt": f"Question {i}: which one?", "response": "ABCD"[a], "choices": ["w", "x", "y", "z"], "answer": a,
         "subject": "physics"} for i, a in enumerate([0, 3, 1, 2])]
FISHER = dict(role="safety", samples=5, batch_size=2, max_len=256, dtype="float64", device="cpu")


def stages(reg: Registry, model_dir: Path) -> dict:
    """The same inputs in any registry: base, safety adapter, eval datasets (all content-addressed)."""
    base = resolve_base(reg, str(model_dir))
    return {"safety": make_adapter(reg, base, "safety", rank=3, seed=1),
            "data": {"overrefusal": register_rows(reg, "benign-test", BENIGN, {"kind": "tests"}, quiet=True).id,
                     "mmlu": register_rows(reg, "mmlu-test", MMLU, {"kind": "tests"}, quiet=True).id}}


def eval_config(model: str, data: dict) -> EvalConfig:
    return EvalConfig(model=model, suites=("overrefusal", "mmlu"), data=data, batch_size=2, max_new_tokens=6,
                      dtype="float64", device="cpu")


def job(home: str, model_dir: str, out: str) -> None:
    """One rank of the job (run as ``python tests/test_distributed.py HOME MODEL_DIR OUT``)."""
    from sstm.distributed import setup
    from sstm.train import TrainConfig, train

    w = setup()
    reg = Registry(home)
    arts = stages(reg, Path(model_dir))
    res = {"adapter": train(reg, TrainConfig(role="utility", model=model_dir, samples=4, max_len=256, batch_size=2,
                                             epochs=1, device="cpu")).id,
           "fisher": fisher(reg, FisherConfig(adapter=arts["safety"].id, **FISHER)).id,
           "eval": [a.id for a in evaluate(reg, eval_config(arts["safety"].id, arts["data"]))]}
    Path(out, f"rank{w.rank}.json").write_text(json.dumps(res))
    os.environ[CRASH_RANK] = "1"  # rank 1 raises after its share, before the success flag
    try:
        fisher(reg, FisherConfig(adapter=arts["safety"].id, **(FISHER | {"samples": 4})))
    except Exception as e:
        Path(out, f"crash{w.rank}.txt").write_text(f"{type(e).__name__}: {e}")
        if w.rank == 1:
            raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """(registry of the 2-process job, its results, its wall time, the ranks' exit codes)."""
    home, out = tmp_path_factory.mktemp("dist-home"), tmp_path_factory.mktemp("dist-out")
    reg = Registry(home)
    stages(reg, tiny_model_dir)  # registered once here, so the ranks start from cache hits
    env = os.environ | {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, str(home), str(tiny_model_dir), str(out)],
                              env=env | {"RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    seconds = time.perf_counter() - t0
    results = [json.loads((out / f"rank{r}.json").read_text()) if (out / f"rank{r}.json").exists() else None
               for r in (0, 1)]
    assert results[0] is not None and results[1] is not None, "\n".join(logs)[-4000:]
    crash = [(out / f"crash{r}.txt").read_text() if (out / f"crash{r}.txt").exists() else None for r in (0, 1)]
    return reg, results, crash, [p.returncode for p in procs], seconds


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model_dir):
    """A second registry with the same inputs, for the single-process stages."""
    reg = Registry(tmp_path_factory.mktemp("single-home"))
    return reg, stages(reg, tiny_model_dir)


def test_every_rank_gets_the_same_ids(run):
    _, (r0, r1), _, _, seconds = run
    assert r0 == r1
    print(f"2-process job: {seconds:.1f} s")


def test_training_registers_one_adapter(run):
    reg, (r0, _), _, _, _ = run
    trained = [a for a in reg.list("adapter") if a.params.get("world_size") is not None]
    assert [a.id for a in trained] == [r0["adapter"]]
    assert trained[0].params["world_size"] == 2 and (trained[0].path / "adapter_model.safetensors").is_file()


def test_distributed_fisher_equals_single_process(run, single):
    reg, (r0, _), _, _, _ = run
    sreg, arts = single
    one = fisher(sreg, FisherConfig(adapter=arts["safety"].id, **FISHER))
    assert one.id == r0["fisher"]  # the world size does not change what is computed
    F2, F1 = load_fisher(reg.get(r0["fisher"])), load_fisher(one)
    assert F2.keys() == F1.keys()
    for m in F1:
        assert float((F2[m] - F1[m]).norm() / F1[m].norm()) < 1e-9, m
    assert reg.get(r0["fisher"]).metrics["samples_used"] == one.metrics["samples_used"] == 5


def test_distributed_eval_records_equal_single_process(run, single):
    reg, (r0, _), _, _, _ = run
    sreg, arts = single
    ones = evaluate(sreg, eval_config(arts["safety"].id, arts["data"]))
    assert [a.id for a in ones] == r0["eval"]
    for two, one in zip((reg.get(i) for i in r0["eval"]), ones):
        assert read_samples(two) == read_samples(one)
        assert [x["id"] for x in read_samples(two)] == sorted(x["id"] for x in read_samples(two))  # prompt order
        assert read_summary(two) == read_summary(one)
    assert len(read_samples(ones[0])) == len(BENIGN) and len(read_samples(ones[1])) == len(MMLU)


def test_a_crashed_rank_leaves_nothing_registered(run):
    reg, (r0, _), crash, codes, _ = run
    assert codes == [0, 1]
    assert crash[1].startswith("RuntimeError") and CRASH_RANK in crash[1]
    assert crash[0].startswith("SSTMError") and "nothing is registered" in crash[0]
    fishers = reg.list("fisher")
    assert [f.id for f in fishers] == [r0["fisher"]]  # only the completed one
    assert not list((reg.root / "fisher").glob(".tmp-*"))  # and no half-written directory


def test_single_process_helpers_are_the_identity(monkeypatch):
    from sstm import distributed

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    t = torch.arange(3.0)
    assert distributed.world() == distributed.World(0, 1, 0)
    assert distributed.shard([1, 2, 3]) == [1, 2, 3] and distributed.gather([4, 5]) == [4, 5]
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [0.0, 1.0, 2.0]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed.shard(list(range(8))) == [1, 4, 7]  # disjoint, round-robin


def test_fisher_hooks_and_generation_run_under_bf16_autocast(reg, tiny_base):
    """What a GPU run does (sstm.models.autocast), on the CPU: the Fisher of a float32 model under bf16
    autocast agrees with the float32 one to bf16 precision (and is float64), and a suite's records come out."""
    from sstm.adapters import read_lora
    from sstm.chat import encode_rows
    from sstm.data import load_rows
    from sstm.evaluate.judge import load_judge
    from sstm.evaluate.suites import SUITES, Settings
    from sstm.fisher import _batches, accumulate_fisher, core_bases
    from sstm.models import autocast_dtype, load_with_adapter

    assert autocast_dtype("cpu", "float32") is None  # mixed precision only on a CUDA GPU
    safety = make_adapter(reg, tiny_base, "safety", rank=3, seed=1)
    model, tok = load_with_adapter(reg, safety, "cpu", "float32")
    examples, _ = encode_rows(tok, load_rows(reg.get(safety.inputs["data"])), 256)
    bases = core_bases(read_lora(safety))
    exact, n = accumulate_fisher(model, _batches(examples, 2, tok.pad_token_id), bases)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, n_mixed = accumulate_fisher(model, _batches(examples, 2, tok.pad_token_id), bases)
        s = Settings(batch_size=2, max_new_tokens=4, max_context_tokens=None, judge=load_judge())
        records = SUITES["overrefusal"].records(model, tok, list(enumerate(BENIGN)), s, lambda k: None)
    assert n_mixed == n and all(v.dtype == torch.float64 for v in mixed.values())
    num = sum(float((mixed[m] - exact[m]).square().sum()) for m in exact)
    # bf16 keeps ~3 digits: on this random 32-wide model the logits already move by ~2 %, the Fisher by ~13 %
    assert (num / sum(float(exact[m].square().sum()) for m in exact)) ** 0.5 < 0.25
    assert [r["id"] for r in records] == list(range(len(BENIGN)))


if __name__ == "__main__":
    job(*sys.argv[1:4])
