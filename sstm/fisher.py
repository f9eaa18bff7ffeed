"""Empirical Fisher matrices in the safety adapter's core coordinates (docs/method.md §2).

For every target module m, the safety adapter gives orthonormal bases

    Q_B = orth(B_s)  (d×r),    Q_A = orth(A_sᵀ)  (n×r),

and a weight update in the span of both is ΔW = Q_B·M·Q_Aᵀ with core coordinates
M ∈ R^{r×r}. The gradient of sample i's loss L_i (mean NLL over its response
tokens) with respect to M is

    G_i = Σ_t (Q_Bᵀ g_{i,t}) (Q_Aᵀ a_{i,t})ᵀ,

with a_{i,t} the module input and g_{i,t} = ∂L_i/∂y_{i,t} the gradient of the
module output at token t. Forward hooks store Q_Aᵀ a, tensor hooks on the module
outputs receive g during one backward pass of Σ_i L_i per batch; since y_i only
depends on sample i, g_i = ∂(Σ_j L_j)/∂y_i = ∂L_i/∂y_i, so every G_i is exact.
The empirical Fisher is

    F = (1/N) Σ_i vec(G_i) vec(G_i)ᵀ   (r²×r², vec = row-major flattening).

F_u uses the utility adapter on utility data, F_s the safety adapter on safety
data; both use the SAFETY adapter's bases, so a utility Fisher's identity
includes the safety adapter (its ``basis`` input).

``structure="kfac"`` keeps two r×r factors per module instead, Σ_i G_i G_iᵀ and
Σ_i G_iᵀ G_i (:mod:`sstm.merge.kfac`): O(r²) memory instead of O(r⁴).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from sstm import distributed, pass_settings
from sstm.data import load_rows, role_dataset, sample_indices
from sstm.chat import collate, encode_rows
from sstm.errors import SSTMError
from sstm.adapters import LoraFactors, read_lora
from sstm.models import autocast, autocast_dtype, base_of, dtype_name, load_with_adapter, pick_device
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.ui import progress, warn

FILE = "fisher.safetensors"
SUMMARY = "summary.json"
ROLES = ("utility", "safety")


@dataclass
class FisherConfig:
    """What `sstm fisher` computes: F_role of `adapter` in the core coordinates of `basis`."""

    adapter: str
    role: str
    basis: str | None = None  # the safety adapter; defaults to `adapter` for role=safety
    samples: int = pass_settings.SAMPLES
    batch_size: int = pass_settings.BATCH_SIZE
    max_len: int = pass_settings.MAX_LEN
    data: str | None = None  # dataset id, or a file / dataset dir / Hub id (sstm.data.roles); default: the adapter's training data
    seed: int = 0  # which rows are drawn when the dataset has more than `samples`
    device: str | None = None
    dtype: str = pass_settings.DTYPE
    structure: str = "full"  # or "kfac"; full is exact and cheap at r = 16 (docs/scale.md)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SSTMError(f"--role {self.role}: expected utility or safety")
        check_structure(self.structure)
        for name in ("samples", "batch_size", "max_len"):
            if getattr(self, name) < 1:
                raise SSTMError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")


# --------------------------------------------------------------------------- math


class Structure(NamedTuple):
    """How a Fisher is kept per module: its state's shape for rank r and the update by one batch."""

    shape: Callable[[int], tuple[int, ...]]
    add: Callable[[torch.Tensor, torch.Tensor], None]  # add(S (modules, *shape), G (modules, b, r, r))


def _add_full(S: torch.Tensor, G: torch.Tensor) -> None:
    """S_m += Σ_i vec(G_i) vec(G_i)ᵀ (row-major vec)."""
    V = G.flatten(2)
    S.baddbmm_(V.transpose(1, 2), V)


def _add_kfac(S: torch.Tensor, G: torch.Tensor) -> None:
    """S_m += [Σ_i G_i G_iᵀ, Σ_i G_iᵀ G_i]: the Q_B- and Q_A-side factors (sstm.merge.kfac)."""
    S[:, 0] += (G @ G.transpose(2, 3)).sum(1)
    S[:, 1] += (G.transpose(2, 3) @ G).sum(1)


STRUCTURES = {"full": Structure(lambda r: (r * r, r * r), _add_full),
              "kfac": Structure(lambda r: (2, r, r), _add_kfac)}


def check_structure(structure: str) -> str:
    if structure not in STRUCTURES:
        raise SSTMError(f"--structure {structure}: expected {' or '.join(STRUCTURES)}")
    return structure


def fisher_bytes(structure: str, r: int, modules: int, store_bytes: int = 4) -> int:
    """Cost model of one Fisher pass: the float64 sums plus their stored copy (full: r⁴ floats per
    module, kfac: 2r²), docs/scale.md."""
    return modules * math.prod(STRUCTURES[structure].shape(r)) * (8 + store_bytes)


def available_bytes(device: torch.device) -> int:
    """Free memory where the Fisher sums live: the GPU's, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil  # a dependency of accelerate

    return psutil.virtual_memory().available


def _orth(X: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of X (..., m, r): reduced QR in float64, signs so diag(R) ≥ 0."""
    if X.shape[-2] < X.shape[-1]:
        raise SSTMError(f"LoRA rank {X.shape[-1]} exceeds the module dimension {X.shape[-2]}")
    Q, R = torch.linalg.qr(X.detach().to("cpu", torch.float64))
    sign = torch.where(torch.diagonal(R, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(torch.float64)
    return Q * sign[..., None, :]


def core_basis(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q_B = orth(B) (d×r), Q_A = orth(Aᵀ) (n×r).

    The sign convention (diag(R) ≥ 0) makes the bases unique for full-rank
    factors, so the Fisher and the merge (possibly on different machines) share
    coordinates.
    """
    return _orth(B), _orth(A.transpose(-1, -2))


def core_bases(safety: LoraFactors) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (Q_B, Q_A)} of the safety adapter; modules of equal shape are factored in one batched QR."""
    groups: dict[tuple, list[str]] = {}
    for m in safety.modules:
        groups.setdefault((tuple(safety.B[m].shape), tuple(safety.A[m].shape)), []).append(m)
    out = {}
    for mods in groups.values():
        QB, QA = core_basis(torch.stack([safety.B[m] for m in mods]), torch.stack([safety.A[m] for m in mods]))
        out.update({m: (QB[i], QA[i]) for i, m in enumerate(mods)})
    return out


def core_coords(f: LoraFactors, m: str, QB: torch.Tensor, QA: torch.Tensor) -> torch.Tensor:
    """M = Q_Bᵀ ΔW Q_A = s·(Q_Bᵀ B)(A Q_A) (r×r), without materialising ΔW."""
    return f.scale * (QB.T @ f.B[m].to(torch.float64)) @ (f.A[m].to(torch.float64) @ QA)


def per_sample_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_i = mean over response tokens of −log p(x_{t+1} | x_≤t); labels −100 are ignored. Shape (batch,)."""
    logits, target = logits[:, :-1], labels[:, 1:]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    mask = target != -100
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1), reduction="none"
    ).view(target.shape)
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1)


class CoreFisherHooks:
    """Hooks on LoRA-wrapped modules giving vec(G_i) per module; `flush()` adds Σ_i vec(G_i) vec(G_i)ᵀ.

    ``root`` is the transformers model whose submodules are named like the adapter's
    modules (``peft_model.base_model.model``); hooks are removed on exit. All
    modules share r (one safety adapter), so the outer products of a batch are one
    batched float64 product over modules, S ∈ R^{modules×r²×r²} (kfac: R^{modules×2×r×r}).
    """

    def __init__(self, root: torch.nn.Module, bases: dict, device, dtype, structure: str = "full"):
        self.root = root
        self.names = list(bases)
        self.Q = [(bases[m][0].to(device, dtype), bases[m][1].to(device, dtype)) for m in self.names]
        self.r = self.Q[0][0].shape[1]
        if any(QB.shape[1] != self.r for QB, _ in self.Q):
            raise SSTMError("the basis adapter has modules of different ranks")
        self.structure = STRUCTURES[structure]
        self.S = torch.zeros(len(self.names), *self.structure.shape(self.r), dtype=torch.float64, device=device)
        self._v: list = [None] * len(self.names)
        self._handles = []

    def __enter__(self) -> "CoreFisherHooks":
        for i, m in enumerate(self.names):
            self._handles.append(self.root.get_submodule(m).register_forward_hook(self._forward(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _forward(self, i: int):
        QB, QA = self.Q[i]

        def hook(module, inputs, output):
            a_core = (inputs[0].detach() @ QA).to(QA.dtype)  # (b, t, r): Q_Aᵀ a_{i,t} (autocast: back from bf16)

            def on_grad(g: torch.Tensor) -> None:
                G = torch.bmm((g.to(QB.dtype) @ QB).transpose(1, 2), a_core)  # (b, r, r): Σ_t (Q_Bᵀ g)(Q_Aᵀ a)ᵀ
                self._v[i] = G.reshape(G.shape[0], -1)  # row-major vec(G_i)

            if output.requires_grad:
                output.register_hook(on_grad)

        return hook

    def flush(self, batch_size: int) -> None:
        """S_m += Σ_i vec(G_i) vec(G_i)ᵀ (or the K-FAC factors) for the batch just back-propagated (zero for
        modules without gradient)."""
        zero = torch.zeros(batch_size, self.r * self.r, dtype=self.Q[0][0].dtype, device=self.S.device)
        V = torch.stack([zero if v is None else v for v in self._v]).to(torch.float64)
        self.structure.add(self.S, V.view(*V.shape[:2], self.r, self.r))
        self._v = [None] * len(self.names)

    def fishers(self) -> dict:
        """{module: S_m} on the CPU."""
        S = self.S.cpu()
        return {m: S[i] for i, m in enumerate(self.names)}


def accumulate_fisher(model, batches, bases: dict, advance=None, structure: str = "full") -> tuple[dict, int]:
    """(Σ_i vec(G_i) vec(G_i)ᵀ per module, or the K-FAC factor sums, N) over `batches` (dicts of
    input_ids/attention_mask/labels).

    One forward and one backward pass of Σ_i L_i per batch; parameters get no
    gradients (only the input embeddings require grad, so activation gradients flow).
    """
    root = model.base_model.model if hasattr(model, "base_model") else model
    param = next(model.parameters())
    was_training, trainable = model.training, [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in trainable:
        p.requires_grad_(False)
    n = 0
    try:
        with CoreFisherHooks(root, bases, param.device, param.dtype, structure) as hooks, torch.enable_grad():
            for batch in batches:
                batch = {k: v.to(param.device) for k, v in batch.items()}
                emb = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
                out = model(inputs_embeds=emb, attention_mask=batch["attention_mask"], use_cache=False)
                per_sample_nll(out.logits, batch["labels"]).sum().backward()
                hooks.flush(batch["input_ids"].shape[0])
                n += batch["input_ids"].shape[0]
                if advance is not None:
                    advance(batch["input_ids"].shape[0])
    finally:
        model.train(was_training)
        for p in trainable:
            p.requires_grad_(True)
    return hooks.fishers(), n


# --------------------------------------------------------------------------- stage


def _batches(examples: list[dict], batch_size: int, pad_id: int):
    """Right-padded batches, longest examples first (similar lengths share a batch)."""
    order = sorted(examples, key=lambda e: -len(e["input_ids"]))
    for i in range(0, len(order), batch_size):
        chunk = [{k: e[k] for k in ("input_ids", "attention_mask", "labels")} for e in order[i: i + batch_size]]
        yield collate(chunk, pad_id, side="right")


def data_rows(reg: Registry, adapter: Artifact, data: str | None, samples: int,
              role: str | None = None) -> tuple[Artifact, list[dict], int]:
    """(dataset, its rows, n): `data` (a dataset id, or a file, dataset dir or Hub id registered as the `role`
    adapter's training split, :func:`sstm.data.role_dataset`; role default: the adapter's), else the adapter's
    training dataset, and the rows a pass over at most `samples` of them uses (all of them, with a warning,
    when there are fewer)."""
    if not (data or adapter.inputs.get("data")):
        raise SSTMError(f"adapter {adapter.short} records no training dataset; pass --data (a CSV/JSONL/parquet "
                        "file, a dataset directory or Hub id, or a dataset id)")
    art = (role_dataset(reg, role or adapter.params.get("role"), data) if data
           else reg.get(adapter.inputs["data"], kind="dataset"))
    rows = load_rows(art)
    if samples > len(rows):
        warn(f"dataset {art.short} has {len(rows)} rows; using all of them instead of {samples}")
    return art, rows, min(samples, len(rows))


def rank_batches(tok, data: Artifact, rows: list[dict], picked: list[int], max_len: int, batch_size: int):
    """(examples, dropped, batches): the `picked` rows encoded (a row without a response token within
    `max_len` is dropped, with a warning; none left is an error) and this rank's share of their batches."""
    examples, dropped = encode_rows(tok, [rows[i] for i in picked], max_len)
    if dropped:
        warn(f"{len(dropped)} of {len(picked)} rows have no response token within --max-len {max_len}; skipped")
    if not examples:
        raise SSTMError(f"no row of dataset {data.short} has a response token within --max-len {max_len}")
    return examples, dropped, distributed.shard(list(_batches(examples, batch_size, tok.pad_token_id)))


def fisher(reg: Registry, cfg: FisherConfig) -> Artifact:
    """Build (or reuse) the `fisher` artifact F_role of `cfg.adapter` in the core coordinates of `cfg.basis`."""
    adapter = reg.get(cfg.adapter, kind="adapter")
    if cfg.basis is None and cfg.role == "utility":
        raise SSTMError("a utility Fisher needs --basis SAFETY_ADAPTER_ID (its coordinates are the safety adapter's)")
    basis = reg.get(cfg.basis, kind="adapter") if cfg.basis else adapter
    if cfg.role == "safety" and basis.id != adapter.id:
        raise SSTMError(f"--role safety: the basis must be the safety adapter itself ({adapter.short}), got {basis.short}")
    base = base_of(reg, adapter)
    if base_of(reg, basis).id != base.id:
        raise SSTMError(f"adapter {adapter.short} and basis {basis.short} have different base models")
    data, rows, n = data_rows(reg, adapter, cfg.data, cfg.samples, cfg.role)
    f_adapter, f_basis = read_lora(adapter), read_lora(basis)
    if set(f_adapter.modules) != set(f_basis.modules):
        raise SSTMError(f"adapter {adapter.short} and basis {basis.short} have different target modules")
    device = pick_device(cfg.device)
    params = {"role": cfg.role, "samples": n, "batch_size": cfg.batch_size, "max_len": cfg.max_len,
              "seed": cfg.seed, "dtype": dtype_name(cfg.dtype), "rank": f_basis.rank, "vec": "row-major",
              "structure": cfg.structure, "autocast": autocast_dtype(device, cfg.dtype)}
    inputs = {"base": base, "adapter": adapter, "basis": basis, "data": data}

    def build(out: Path) -> dict:
        picked = sample_indices(len(rows), n, cfg.seed)
        need = fisher_bytes(cfg.structure, f_basis.rank, len(f_basis.modules), 8 if cfg.dtype == "float64" else 4)
        free = available_bytes(torch.device(device))
        if need > free:
            hint = "; --structure kfac keeps 2r² instead of r⁴ floats per module" if cfg.structure == "full" else ""
            warn(f"a {cfg.structure} Fisher of {len(f_basis.modules)} modules at r = {f_basis.rank} needs "
                 f"~{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free (docs/scale.md){hint}")
        model, tok = load_with_adapter(reg, adapter, device, cfg.dtype)
        examples, dropped, batches = rank_batches(tok, data, rows, picked, cfg.max_len, cfg.batch_size)
        with progress(f"Fisher F_{cfg.role[0]}", total=sum(len(b["input_ids"]) for b in batches),
                      unit="samples") as advance, autocast(device, cfg.dtype):
            S, N = accumulate_fisher(model, batches, core_bases(f_basis), advance, cfg.structure)
        for s in S.values():  # the sums and the row count over all ranks
            distributed.all_reduce_sum(s)
        N = int(distributed.all_reduce_sum(torch.tensor(N)))
        store = torch.float64 if cfg.dtype == "float64" else torch.float32
        F = {m: (s / N).to(store).contiguous() for m, s in S.items()}
        meta = {"n": str(N), "rank": str(f_basis.rank), "role": cfg.role, "vec": "row-major",
                "structure": cfg.structure}
        from safetensors.torch import save_file

        save_file(F, str(out / FILE), metadata=meta)
        traces = {m: float(torch.trace(f if f.dim() == 2 else f[0])) for m, f in F.items()}  # kfac: tr F_B = tr F
        tokens = sum(sum(l != -100 for l in e["labels"][1:]) for e in examples)
        summary = {"samples_used": N, "response_tokens": tokens, "rows": [picked[e["row"]] for e in examples],
                   "skipped_rows": [picked[i] for i in dropped], "trace": traces}
        (out / SUMMARY).write_text(json.dumps(summary, indent=1))
        return {"samples_used": N, "response_tokens": tokens, "trace_mean": sum(traces.values()) / len(traces)}

    label = f"F_{cfg.role} {adapter.short} basis {basis.short} n={n}"
    label += "" if cfg.structure == "full" else f" {cfg.structure}"
    return distributed.get_or_build(reg, "fisher", params, inputs, code_fingerprint(__name__), build, label=label,
                                    seed=cfg.seed)


def load_fisher(art: Artifact) -> dict[str, torch.Tensor]:
    """{module: F} of a `fisher` artifact, as float64: r²×r², or 2×r×r factors for structure kfac."""
    from safetensors.torch import load_file

    if art.kind != "fisher":
        raise SSTMError(f"artifact {art.short} is a {art.kind}, not a fisher")
    return {m: f.to(torch.float64) for m, f in load_file(str(Path(art.path) / FILE)).items()}
