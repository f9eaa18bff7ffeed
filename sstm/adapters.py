"""PEFT LoRA adapter directories: reading, validating, writing and registering them.

A PEFT LoRA adapter stores, per target module m, ``lora_A`` (r×n) and ``lora_B``
(d×r); PEFT applies ΔW_m = s·B_m·A_m with s = alpha/r (alpha/√r with rsLoRA).
Merges and Fishers only need these factors, so :func:`read_lora` reads them straight
from ``adapter_model.safetensors`` (no model is loaded) and merged adapters are
written back in the same layout (:func:`write_lora`), which
``PeftModel.from_pretrained`` loads unchanged. :func:`register_adapter_dir` registers
a user's existing adapter directory as an ``adapter`` artifact after checking it
against the base model module by module.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sstm import storage
from sstm.errors import SSTMError, read_text
from sstm.registry import Artifact, Registry, code_fingerprint, sha256_file
from sstm.ui import warn

if TYPE_CHECKING:
    import torch

ROLES = ("utility", "safety")  # what an adapter was trained for; recorded in its params
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
    cfg = read_config(cfg_path, f"adapter {art.short}")
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
    r = cfg["r"]
    for m in A:
        if A[m].dim() != 2 or B[m].dim() != 2 or A[m].shape[0] != r or B[m].shape[1] != r:
            raise SSTMError(f"adapter {art.short}: module {m} has rank {A[m].shape[0]}, config says r={r}")
    alpha = float(cfg.get("lora_alpha", r))
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return LoraFactors(config=cfg, A=A, B=B, scale=scale, rank=r)


def read_deltas(art: Artifact, dtype=None) -> dict[str, "torch.Tensor"]:
    """ΔW per module of an adapter or merged artifact, in either storage format (:mod:`sstm.storage`; in
    `dtype`, default: as stored)."""
    if storage.storage_format(art) == "dense":
        deltas = storage.read_dense(art)
        return deltas if dtype is None else {m: d.to(dtype) for m, d in deltas.items()}
    f = read_lora(art)
    return {m: f.delta(m, dtype) for m in f.modules}


# adapter_config.json flags whose adapters are more than ΔW = s·B·A per module: merging (and sstm's storage
# of a merge as plain LoRA factors or ΔW) cannot represent them.
UNSUPPORTED = (("use_dora", "DoRA adapters"), ("fan_in_fan_out", "adapters with fan_in_fan_out (Conv1D) layers"),
               ("lora_bias", "adapters with LoRA biases"),
               ("rank_pattern", "adapters with per-module ranks (rank_pattern)"),
               ("alpha_pattern", "adapters with per-module alphas (alpha_pattern)"),
               ("modules_to_save", "adapters that train whole modules (modules_to_save)"))


def read_config(path: Path, who: str) -> dict:
    """The ``adapter_config.json`` at `path`, checked to describe a plain LoRA adapter sstm can merge: a
    JSON object, ``peft_type`` LORA, none of :data:`UNSUPPORTED`, no trained biases, and an integer rank
    ``r`` >= 1 (the shapes of the tensors are checked against it where they are read)."""
    try:
        cfg = json.loads(read_text(path, who))
    except json.JSONDecodeError as e:
        raise SSTMError(f"{who}: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict):
        raise SSTMError(f"{who}: {path} holds a JSON {type(cfg).__name__}, not an object of PEFT settings")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise SSTMError(f"{who}: peft_type is {cfg.get('peft_type')}, only LORA adapters are supported")
    for flag, what in UNSUPPORTED:
        if cfg.get(flag):
            raise SSTMError(f"{who}: {what} are not supported ({flag} is set in {CONFIG_FILE})")
    if cfg.get("bias", "none") != "none":
        raise SSTMError(f"{who}: adapters that train biases (bias: {cfg['bias']}) are not supported")
    r = cfg.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise SSTMError(f"{who}: {CONFIG_FILE} has " + ("no rank r" if r is None else f"r = {r!r}")
                        + " (the LoRA rank, an integer >= 1)")
    return cfg


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


def check_role(role: str) -> None:
    if role not in ROLES:
        raise SSTMError(f"--role {role}: expected one of {', '.join(ROLES)}")


def save_peft(model, out: Path) -> None:
    """Save a PEFT model's adapter into `out`: lora_A/lora_B only.

    ``save_embedding_layers=False``: with lm_head (tied to the embedding) as a target,
    PEFT would otherwise also save full copies of the embedding weights.
    """
    model.save_pretrained(out, save_embedding_layers=False)


# --------------------------------------------------------------------------- registering a directory


def _meta_modules(base: Artifact) -> dict:
    """The base model's modules by name, instantiated on the meta device (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base.path))
    return dict(model.named_modules())


def _module_dims(module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or Embedding (as y = ΔW x), None otherwise."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    return None


def check_adapter_fits(path: Path, tensors: dict[str, tuple], base: Artifact) -> list[str]:
    """Check every LoRA tensor against the base module it adapts; returns the adapted module types.

    For y = W x + B A x: lora_A of module m has shape (r, in_features(m)) and lora_B has
    (out_features(m), r) (an Embedding counts as in = num_embeddings, out = embedding_dim).
    """
    modules = _meta_modules(base)
    names = set()
    for key, shape in tensors.items():
        if ".lora_" not in key:
            continue
        which = "A" if (".lora_A" in key or ".lora_embedding_A" in key) else "B"
        mod = key.split(".lora_")[0].removeprefix(KEY_PREFIX)
        target = modules.get(mod)
        if target is None:
            raise SSTMError(f"adapter {path}: module {mod} does not exist in base {base.label or base.short} "
                            f"(trained for another architecture?)")
        dims = _module_dims(target)
        if dims is None:
            raise SSTMError(f"adapter {path}: {mod} is a {type(target).__name__}, not a Linear/Embedding layer")
        got, want = (shape[1], dims[0]) if which == "A" else (shape[0], dims[1])
        if len(shape) != 2 or got != want:
            raise SSTMError(f"adapter {path}: lora_{which} of {mod} has shape {tuple(shape)}, but base "
                            f"{base.label or base.short} has {'in' if which == 'A' else 'out'}_features {want} "
                            f"there (trained on another base model?)")
        names.add(module_type(mod))
    if not names:
        raise SSTMError(f"adapter {path}: {WEIGHTS_FILE} holds no LoRA tensors")
    return sorted(names)


def check_rank(path: Path, tensors: dict[str, tuple], r: int) -> None:
    """Every lora_A is (r, ·) and every lora_B (·, r), r the config's rank: PEFT loads the factors into
    layers of that rank, and the merges read the scale alpha/r from it."""
    for key, shape in tensors.items():
        for part, axis in ((".lora_A.", 0), (".lora_B.", 1)):
            if part in key and len(shape) == 2 and shape[axis] != r:
                raise SSTMError(f"--from-dir {path}: {key} has rank {shape[axis]} (shape {tuple(shape)}), but "
                                f"{CONFIG_FILE} says r = {r}")


def register_adapter_dir(reg: Registry, path: str | Path, role: str, base: Artifact | str | None) -> Artifact:
    """Register an existing PEFT LoRA adapter directory as an `adapter` artifact on `base`.

    `base` is a base artifact, or a `--model` spec (None: the embedded default) resolved only
    after the directory has passed its own checks. Only the lora_A/lora_B tensors are kept
    (embedding copies PEFT may have saved are dropped; they equal the base weights); the
    adapter must fit the base module by module.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    check_role(role)
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SSTMError(f"--from-dir {path}: not a directory")
    config_path, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise SSTMError(f"--from-dir {path}: no {CONFIG_FILE} (not a PEFT adapter directory)")
    if not weights.is_file():
        hint = " (adapter_model.bin found: re-save it with safe_serialization=True)" if (path / "adapter_model.bin").exists() else ""
        raise SSTMError(f"--from-dir {path}: no {WEIGHTS_FILE}{hint}")
    adapter_config = read_config(config_path, f"--from-dir {path}")
    if "peft_type" not in adapter_config:
        raise SSTMError(f"--from-dir {path}: {CONFIG_FILE} has no peft_type (not a PEFT adapter config)")
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError on a corrupt header
        raise SSTMError(f"{weights}: not a readable safetensors file ({e})") from None
    check_rank(path, shapes, adapter_config["r"])
    if not isinstance(base, Artifact):
        from sstm.models import EMBEDDED, resolve_base  # lazy: torch stays out of CLI start-up

        base = resolve_base(reg, base or EMBEDDED)
    modules = check_adapter_fits(path, shapes, base)
    lora_keys = [k for k in shapes if ".lora_" in k]
    params = {"role": role, "source": "dir", "sha256": sha256_file(weights),
              "config_sha256": sha256_file(config_path), "rank": adapter_config.get("r"),
              "alpha": adapter_config.get("lora_alpha"), "target_modules": modules,
              "declared_base": adapter_config.get("base_model_name_or_path")}

    def build(out: Path) -> None:
        shutil.copyfile(config_path, out / CONFIG_FILE)
        if len(lora_keys) == len(shapes):
            shutil.copyfile(weights, out / WEIGHTS_FILE)
        else:
            with safe_open(str(weights), framework="pt") as f:
                save_file({k: f.get_tensor(k) for k in lora_keys}, str(out / WEIGHTS_FILE), metadata={"format": "pt"})

    return reg.get_or_build("adapter", params, {"base": base}, code_fingerprint(__name__), build,
                            label=f"{role} (from {path.name})")
