"""Statistics of one adapter on its own data in the full weight space of every LoRA-targeted module
(docs/method.md §13): what RegMean and Fisher merging weigh the two updates with.

For module m (weight d×n, y = W x) with input a_{i,t} of sample i at token t and output gradient
g_{i,t} = ∂L_i/∂y_{i,t} (L_i: mean NLL over sample i's response tokens, :func:`sstm.fisher.per_sample_nll`):

* ``gram``: G = (1/T) Σ_{i,t} a_{i,t} a_{i,t}ᵀ (n×n) over the T non-padding tokens (prompt and
  response) -- RegMean's input Gram matrix as a per-token mean, like MergeLM's ``regmean_weights``
  (yule-BUAA/MergeLM, which also counts padding; this does not). One forward pass, no gradients.
* ``diagonal``: F = (1/N) Σ_i (∇_W L_i)⊙² with ∇_W L_i = Σ_t g_{i,t} a_{i,t}ᵀ (d×n): the diagonal
  empirical Fisher of the module's effective weight W₀ + ΔW (Matena & Raffel take the expectation
  over the model's own predictions; with a 49k-token vocabulary this uses the data's tokens, like
  :mod:`sstm.fisher`). One backward pass of Σ_i L_i per batch: g_i depends on L_i alone, so every
  per-sample gradient is exact.

Both run the adapter on its base (each fine-tuned model on its own data, as both papers do), on the
rows and batches of the Fisher stage: the same `samples`, `seed`, `max_len` and `batch_size` draw the
same rows. They are registered as `fisher` artifacts, told apart by ``params["statistic"]``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sstm import distributed
from sstm.adapters import read_lora
from sstm.data import sample_indices
from sstm.errors import SSTMError
from sstm.fisher import FisherConfig, data_rows, per_sample_nll, rank_batches
from sstm.models import base_of, dtype_name, load_with_adapter, pick_device
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.ui import progress

FILE = "stats.safetensors"
SUMMARY = "summary.json"
STATISTICS = ("gram", "diagonal")


@dataclass
class StatsConfig:
    """A `statistic` of `adapter` on `data` (default: its training data); data settings default to FisherConfig's."""

    adapter: str
    statistic: str
    samples: int = FisherConfig.samples
    batch_size: int = FisherConfig.batch_size
    max_len: int = FisherConfig.max_len
    data: str | None = None
    seed: int = 0
    device: str | None = None
    dtype: str = FisherConfig.dtype

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise SSTMError(f"statistic {self.statistic}: expected {' or '.join(STATISTICS)}")
        for name in ("samples", "batch_size", "max_len"):
            if getattr(self, name) < 1:
                raise SSTMError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")


class _Hooks:
    """Forward hooks on the LoRA-wrapped modules adding one batch's statistic to S[m], in the model's dtype
    (at least float32: float64 sums of the diagonal would take twice a model's size)."""

    def __init__(self, root: torch.nn.Module, modules: list[str], statistic: str, dtype: torch.dtype):
        self.root, self.modules, self.statistic = root, modules, statistic
        self.dtype = torch.promote_types(dtype, torch.float32)
        self.S: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None  # (b, t) attention mask of the batch in flight

    def __enter__(self) -> "_Hooks":
        self._handles = [self.root.get_submodule(m).register_forward_hook(self._hook(m)) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def _sum(self, m: str, rows: int, cols: int, device) -> torch.Tensor:
        if m not in self.S:
            self.S[m] = torch.zeros(rows, cols, dtype=self.dtype, device=device)
        return self.S[m]

    def _hook(self, m: str):
        def gram(module, inputs, output):
            x = inputs[0].detach()[self.mask.bool()].to(self.dtype)  # (T, n): the batch's non-padding tokens
            self._sum(m, x.shape[1], x.shape[1], x.device).addmm_(x.T, x)

        def diagonal(module, inputs, output):
            a = inputs[0].detach().to(self.dtype)
            lengths = self.mask.sum(1).tolist()

            def on_grad(g: torch.Tensor) -> None:
                g, S = g.to(self.dtype), self._sum(m, g.shape[-1], a.shape[-1], g.device)
                for i, n in enumerate(lengths):  # one d×n gradient at a time (lm_head: 49k×576)
                    G = g[i, :n].T @ a[i, :n]
                    S.addcmul_(G, G)

            if output.requires_grad:
                output.register_hook(on_grad)

        return gram if self.statistic == "gram" else diagonal


@contextlib.contextmanager
def _frozen(model):
    """Eval mode, no parameter requiring grad (the input embeddings carry the gradient); restored on exit."""
    was_training, trainable = model.training, [p for p in model.parameters() if p.requires_grad]
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        model.train(was_training)
        for p in trainable:
            p.requires_grad_(True)


def accumulate(model, batches, modules: list[str], statistic: str, advance=None) -> tuple[dict, int, int]:
    """(Σ per module, samples N, non-padding tokens T) of `statistic` over `batches` (input_ids/attention_mask/labels).

    ``gram``: forward passes only. ``diagonal``: one forward and backward pass of Σ_i L_i per batch; no
    parameter gets a gradient (only the input embeddings require grad, so output gradients flow).
    """
    root = model.base_model.model if hasattr(model, "base_model") else model
    param = next(model.parameters())
    n = tokens = 0
    with _frozen(model), _Hooks(root, modules, statistic, param.dtype) as hooks:
        for batch in batches:
            ids, mask = batch["input_ids"].to(param.device), batch["attention_mask"].to(param.device)
            hooks.mask = mask
            if statistic == "gram":
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
            else:
                with torch.enable_grad():
                    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
                    out = model(inputs_embeds=emb, attention_mask=mask, use_cache=False)
                    per_sample_nll(out.logits, batch["labels"].to(param.device)).sum().backward()
            n += ids.shape[0]
            tokens += int(mask.sum())
            if advance is not None:
                advance(ids.shape[0])
    missing = sorted(set(modules) - set(hooks.S))
    if missing and n:
        raise SSTMError(f"no {statistic} statistic reached module {missing[0]} (is it on the path to the loss?)")
    return hooks.S, n, tokens


def weight_stats(reg: Registry, cfg: StatsConfig) -> Artifact:
    """Build (or reuse) the `fisher` artifact holding `cfg.statistic` of `cfg.adapter` per target module."""
    adapter = reg.get(cfg.adapter, kind="adapter")
    data, rows, n = data_rows(reg, adapter, cfg.data, cfg.samples)
    modules = read_lora(adapter).modules
    params = {"statistic": cfg.statistic, "samples": n, "batch_size": cfg.batch_size, "max_len": cfg.max_len,
              "seed": cfg.seed, "dtype": dtype_name(cfg.dtype)}
    inputs = {"base": base_of(reg, adapter), "adapter": adapter, "data": data}

    def build(out: Path) -> dict:
        picked = sample_indices(len(rows), n, cfg.seed)
        model, tok = load_with_adapter(reg, adapter, pick_device(cfg.device), cfg.dtype)
        examples, dropped, batches = rank_batches(tok, data, rows, picked, cfg.max_len, cfg.batch_size)
        with progress(f"{cfg.statistic} {adapter.short}", total=sum(len(b["input_ids"]) for b in batches),
                      unit="samples") as advance:
            S, N, T = accumulate(model, batches, modules, cfg.statistic, advance)
        for s in S.values():
            distributed.all_reduce_sum(s)
        N = int(distributed.all_reduce_sum(torch.tensor(N)))
        T = int(distributed.all_reduce_sum(torch.tensor(T)))
        store = torch.float64 if cfg.dtype == "float64" else torch.float32
        stats = {m: (s / (T if cfg.statistic == "gram" else N)).to(store).contiguous() for m, s in S.items()}
        from safetensors.torch import save_file

        save_file(stats, str(out / FILE), metadata={"statistic": cfg.statistic, "samples": str(N), "tokens": str(T)})
        summary = {"samples_used": N, "tokens": T, "rows": [picked[e["row"]] for e in examples],
                   "skipped_rows": [picked[i] for i in dropped]}
        (out / SUMMARY).write_text(json.dumps(summary, indent=1))
        return {"samples_used": N, "tokens": T}

    label = f"{cfg.statistic} {adapter.short} n={n}"
    return distributed.get_or_build(reg, "fisher", params, inputs, code_fingerprint(__name__), build, label=label,
                                    seed=cfg.seed)


def load_stats(art: Artifact, statistic: str) -> dict[str, torch.Tensor]:
    """{module: statistic} of a `fisher` artifact built by :func:`weight_stats`, as stored (float32 unless float64)."""
    from safetensors.torch import load_file

    if art.kind != "fisher" or art.params.get("statistic") != statistic:
        raise SSTMError(f"artifact {art.short} is not a {statistic} statistic")
    return load_file(str(Path(art.path) / FILE))
