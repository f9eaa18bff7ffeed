"""Reading and writing LoRA adapters as plain factors, without loading a model.

A PEFT LoRA adapter stores, per target module m, ``lora_A`` (r×n) and ``lora_B``
(d×r); PEFT applies ΔW_m = s·B_m·A_m with s = alpha/r (alpha/√r with rsLoRA).
Merges only need these factors, so they are read straight from
``adapter_model.safetensors`` and merged adapters are written back in the same
layout, which ``PeftModel.from_pretrained`` loads unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry
from sstm.ui import warn

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class LoraFactors:
    """One adapter's factors: ΔW_m = scale·B[m]·A[m] for every target module m."""

    config: dict
    A: dict  # module -> (r, n)
    B: dict  # module -> (d, r)
    scale: float
    rank: int

    @property
    def modules(self) -> list[str]:
        return sorted(self.A)

    @property
    def dtype(self) -> "torch.dtype":
        return next(iter(self.A.values())).dtype

    def delta(self, m: str, dtype=None) -> "torch.Tensor":
        """ΔW_m = s·B_m·A_m (d×n), in `dtype` (default: the stored dtype)."""
        A, B = self.A[m], self.B[m]
        if dtype is not None:
            A, B = A.to(dtype), B.to(dtype)
        return self.scale * (B @ A)


def module_type(module: str) -> str:
    """Short module name used for layer weights: ``model.layers.3.self_attn.q_proj`` -> ``q_proj``."""
    return module.rsplit(".", 1)[-1]


def read_lora(art: Artifact) -> LoraFactors:
    """The LoRA factors and scale of an `adapter`/`merged` artifact (a PEFT directory)."""
    from safetensors.torch import load_file

    cfg_path, w_path = Path(art.path) / CONFIG_FILE, Path(art.path) / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise SSTMError(f"{art.kind} {art.short} is not a PEFT adapter directory ({CONFIG_FILE} or {WEIGHTS_FILE} missing)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise SSTMError(f"adapter {art.short} is a {cfg.get('peft_type')} adapter; only LoRA adapters can be merged")
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D) layers"), ("lora_bias", "LoRA biases")):
        if cfg.get(flag):
            raise SSTMError(f"adapter {art.short} uses {what}, which merging does not support")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise SSTMError(f"adapter {art.short} has per-module rank/alpha patterns, which merging does not support")
    if cfg.get("bias", "none") != "none" or cfg.get("modules_to_save"):
        raise SSTMError(f"adapter {art.short} trains biases or whole modules (modules_to_save); only LoRA factors can be merged")
    tensors = load_file(str(w_path))
    A, B, other = {}, {}, []
    for key, t in tensors.items():
        if key.startswith(KEY_PREFIX) and key.endswith(A_SUFFIX):
            A[key[len(KEY_PREFIX): -len(A_SUFFIX)]] = t
        elif key.startswith(KEY_PREFIX) and key.endswith(B_SUFFIX):
            B[key[len(KEY_PREFIX): -len(B_SUFFIX)]] = t
        else:
            other.append(key)
    if other:
        warn(f"adapter {art.short}: ignoring {len(other)} non-LoRA tensors (e.g. {other[0]}); "
             "save adapters with save_embedding_layers=False")
    if not A or set(A) != set(B):
        raise SSTMError(f"adapter {art.short} has no complete lora_A/lora_B pairs")
    r = int(cfg["r"])
    for m in A:
        if A[m].shape[0] != r or B[m].shape[1] != r or A[m].dim() != 2:
            raise SSTMError(f"adapter {art.short}: module {m} has rank {A[m].shape[0]}, config says r={r}")
    alpha = float(cfg.get("lora_alpha", r))
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return LoraFactors(config=cfg, A=A, B=B, scale=scale, rank=r)


def load_pair(reg: Registry, utility: str, safety: str) -> tuple[Artifact, Artifact, LoraFactors, LoraFactors]:
    """Resolve both adapters and check they can be merged: same base model, same target modules and shapes."""
    u, s = reg.get(utility, kind="adapter"), reg.get(safety, kind="adapter")
    if u.id == s.id:
        raise SSTMError(f"--utility and --safety are the same adapter {u.short}")
    for art, role in ((u, "utility"), (s, "safety")):
        if art.params.get("role") not in (None, role):
            warn(f"adapter {art.short} was trained with role {art.params.get('role')}, used here as the {role} adapter")
    if u.inputs.get("base") is None or u.inputs.get("base") != s.inputs.get("base"):
        ub, sb = (u.inputs.get("base") or "none")[:12], (s.inputs.get("base") or "none")[:12]
        raise SSTMError(f"adapters have different base models (utility {u.short} on {ub}, safety {s.short} on {sb})")
    fu, fs = read_lora(u), read_lora(s)
    if set(fu.modules) != set(fs.modules):
        only = sorted(set(fu.modules) ^ set(fs.modules))
        raise SSTMError(f"adapters have different target modules ({len(only)} differ, e.g. {only[0]})")
    for m in fu.modules:
        if fu.B[m].shape[0] != fs.B[m].shape[0] or fu.A[m].shape[1] != fs.A[m].shape[1]:
            raise SSTMError(f"adapters disagree on the shape of module {m}")
    return u, s, fu, fs


def write_lora(out: Path, template: dict, A: dict, B: dict, rank: int, dtype) -> None:
    """Write a PEFT adapter dir with factors A[m] (R×n), B[m] (d×R) in `dtype`, lora_alpha = r = R (scale 1).

    ``template`` is the adapter_config.json of an input adapter (base model,
    target modules, task type); rank, alpha and scaling flags are overridden.
    """
    from safetensors.torch import save_file

    cfg = dict(template)
    cfg.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={},
               lora_dropout=0.0, inference_mode=True, init_lora_weights=True)
    tensors = {}
    for m in sorted(A):
        tensors[f"{KEY_PREFIX}{m}{A_SUFFIX}"] = A[m].to(dtype).contiguous()
        tensors[f"{KEY_PREFIX}{m}{B_SUFFIX}"] = B[m].to(dtype).contiguous()
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
