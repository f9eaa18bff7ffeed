"""`sstm train`: LoRA supervised fine-tuning of a utility or a safety adapter.

One stage function, :func:`train`, builds an ``adapter`` artifact through the
registry: inputs ``base`` (the base model) and ``data`` (the training split, itself a
registered ``dataset``); params hold every training choice. Same inputs -> same id
-> a cache hit, no training.

Training is plain transformers ``Trainer`` + PEFT LoRA on q/k/v/o/gate/up/down and
lm_head (ΔW = (alpha/r)·B·A per module, B initialised to 0 so training starts at the
base model). The loss is the mean next-token cross-entropy over *response* tokens
only: :func:`sstm.data.chat.encode_example` labels the prompt -100. The adapter is
saved with ``save_embedding_layers=False`` (only lora_A/lora_B, never the full
embedding/lm_head weights PEFT would otherwise copy because lm_head is a target).

Multi-GPU: run the same command under accelerate, e.g.
``accelerate launch -m sstm.cli train --role safety --dtype bf16``. Trainer
shards batches across processes; every rank trains, rank 0 alone builds and
registers the artifact (the others train into a scratch directory and then pick
the registered artifact up), and the world size is part of the params because it
multiplies the effective batch size. (Checked on CPU with
``torchrun --nproc_per_node 2 -m sstm.cli train ... --device cpu``, the launcher
accelerate uses for multi-GPU runs.)

Ctrl-C: ``Trainer`` does not catch KeyboardInterrupt; its output dir is a
``TemporaryDirectory`` inside the build and the registry's build is atomic, so an
interrupted run leaves nothing registered and no stray directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from sstm.data import load_rows
from sstm.data.chat import collate, encode_rows
from sstm.errors import SSTMError
from sstm.models import DTYPES, EMBEDDED, dtype_name, load_base, pick_device, resolve_base
from sstm.registry import Artifact, Registry, artifact_id, canonical_json, code_fingerprint, sha256_file
from sstm.ui import progress, warn

ROLES = ("utility", "safety")
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
CODE = ("train.py", "data/chat.py")
# Tokens of --max-len kept for the chat markup, the request and the refusal; a jailbreak
# template of the embedded safety data may use the rest (max_template_tokens = max_len - this).
RESERVED_TOKENS = 128

# The quick setting (`sstm run --quick`): both adapters train in about 4 minutes on 2 CPU cores.
# Embedded safety data: a quarter of the rows are benign requests with the base model's own answers.
BENIGN_FRACTION = 0.25

QUICK = {"samples": 48, "epochs": 1.0, "max_len": 256, "lr": 1e-3, "batch_size": 4}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines an adapter (plus where to run it)."""

    role: str
    model: str = EMBEDDED  # `--model`: smollm2-135m, a local directory, a Hub id or a base artifact id
    data: str | None = None  # `--data`: None = the embedded default of the role
    epochs: float = 1.0
    rank: int = 16
    alpha: int = 32
    lr: float = 2e-4
    samples: int | None = None  # training rows (None = the data source's default size)
    max_len: int = 512
    seed: int = 0
    batch_size: int = 4
    grad_accum: int = 1
    dropout: float = 0.0
    warmup: float = 0.0  # warmup steps: an int, or a float in [0, 1) = a ratio of the steps
    target_modules: tuple[str, ...] = TARGET_MODULES
    # embedded safety data only: share of rows that are benign requests answered by the base model
    benign_fraction: float = BENIGN_FRACTION
    device: str = "auto"
    dtype: str = "float32"

    def check(self) -> None:
        if self.role not in ROLES:
            raise SSTMError(f"--role {self.role}: expected one of {', '.join(ROLES)}")
        for name in ("rank", "alpha", "batch_size", "grad_accum", "max_len"):
            if getattr(self, name) < 1:
                raise SSTMError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.epochs <= 0 or self.lr <= 0:
            raise SSTMError("--epochs and --lr must be positive")
        if self.samples is not None and self.samples < 1:
            raise SSTMError(f"--samples {self.samples}: must be at least 1")
        if self.max_len < RESERVED_TOKENS + 32 and self.role == "safety" and self.data is None:
            raise SSTMError(f"--max-len {self.max_len}: the embedded safety data needs at least {RESERVED_TOKENS + 32}")
        if self.dtype not in DTYPES:
            raise SSTMError(f"--dtype {self.dtype}: expected one of {', '.join(DTYPES)}")
        if not 0 <= self.dropout < 1:
            raise SSTMError(f"--dropout {self.dropout}: expected a value in [0, 1)")
        if not 0 <= self.benign_fraction < 1:
            raise SSTMError(f"--benign-fraction {self.benign_fraction}: expected a value in [0, 1)")


def quick(role: str, **overrides) -> TrainConfig:
    """The quick-setting config of a role (`sstm run --quick`)."""
    return TrainConfig(role=role, **(QUICK | overrides))


# --------------------------------------------------------------------------- data


def training_data(reg: Registry, cfg: TrainConfig, base: Artifact, tokenizer) -> Artifact:
    """The registered training split of `cfg.role`.

    Embedded safety data: jailbreak templates capped to the context budget, and a share
    `benign_fraction` of the rows are benign requests answered by the base model
    (:func:`sstm.data.benign.helpful_split`), capped at the size of that pool.
    """
    from sstm.data import safety_split, utility_split
    from sstm.data.benign import helpful_split
    from sstm.data.safety import DEFAULT_N, mixed_split

    if cfg.role == "utility":
        return utility_split(reg, "train", source=cfg.data, n=cfg.samples, seed=cfg.seed)
    if cfg.data is not None:
        return safety_split(reg, "train", source=cfg.data, n=cfg.samples, seed=cfg.seed)
    n = cfg.samples or DEFAULT_N["train"]
    helpful = helpful_split(reg, base, cfg.device) if cfg.benign_fraction > 0 else None
    n_helpful = min(round(n * cfg.benign_fraction), int(helpful.metrics["n"])) if helpful else 0
    refusals = safety_split(reg, "train", n=n - n_helpful, seed=cfg.seed, max_template_tokens=cfg.max_len - RESERVED_TOKENS,
                            tokenizer=tokenizer)
    return mixed_split(reg, refusals, helpful, n_helpful, cfg.seed) if n_helpful else refusals


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


# --------------------------------------------------------------------------- model


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")


@contextlib.contextmanager
def quiet_library_warnings():
    """Silence two known, harmless library warnings during LoRA setup and training.

    PEFT warns that lm_head is tied to the input embedding: the LoRA deliberately adapts
    the output projection only. transformers warns about its own deprecated property.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tied layer is part of the adapter.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated.*")
        yield


@torch.no_grad()
def batch_loss(model, batch: dict[str, torch.Tensor]) -> float:
    """Mean cross-entropy over the batch's response tokens (labels != -100), dropout off."""
    was_training = model.training
    model.eval()
    device = next(p.device for p in model.parameters())
    loss = model(**{k: v.to(device) for k, v in batch.items()}).loss.item()
    model.train(was_training)
    return loss


def _progress_callback(stack: contextlib.ExitStack, label: str):
    """A TrainerCallback that drives a Rich progress bar (steps, ETA, last loss) on the main process."""
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        advance = None

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                self.advance = stack.enter_context(progress(label, state.max_steps, unit="steps"))

        def on_step_end(self, args, state, control, **kw):
            if self.advance:
                self.advance(1)

        def on_log(self, args, state, control, logs=None, **kw):
            if self.advance and logs and "loss" in logs:
                self.advance(0, extra=f"loss {logs['loss']:.3f}")

    return RichProgress()


def _training_arguments(cfg: TrainConfig, device: str, output_dir: str):
    from transformers import TrainingArguments

    if cfg.dtype in ("float16", "fp16") and not device.startswith("cuda"):
        raise SSTMError("--dtype float16 needs a CUDA device (use bfloat16 or float32 on CPU)")
    if device.startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(torch.device(device))  # a single-process Trainer uses the current CUDA device
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup,
        weight_decay=0.0,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=device == "cpu",
        bf16=DTYPES[cfg.dtype] is torch.bfloat16,
        fp16=DTYPES[cfg.dtype] is torch.float16,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=device.startswith("cuda"),
        ddp_find_unused_parameters=False,
    )


def lora_model(base: Artifact, cfg: TrainConfig):
    """(PEFT model with a fresh, seeded LoRA on cfg.target_modules, tokenizer), on the CPU."""
    from peft import get_peft_model
    from transformers import set_seed

    model, tok = load_base(base, "cpu", cfg.dtype)
    set_seed(cfg.seed)  # seeds the LoRA A initialisation (B starts at 0)
    with quiet_library_warnings():
        model = get_peft_model(model, lora_config(cfg))
    return model, tok


def make_trainer(model, examples: list[dict], cfg: TrainConfig, device: str, output_dir: str, collator):
    """The transformers Trainer sstm trains with (no checkpoints, no reporting, no console printing)."""
    from transformers import PrinterCallback, Trainer

    with quiet_library_warnings():
        trainer = Trainer(model=model, args=_training_arguments(cfg, device, output_dir),
                          train_dataset=ListDataset(examples), data_collator=collator)
    trainer.remove_callback(PrinterCallback)
    return trainer


def fit(base: Artifact, rows: list[dict], cfg: TrainConfig, out: Path, device: str) -> dict[str, float]:
    """Train a LoRA adapter on `rows` and save it (PEFT layout) into `out`; returns training metrics.

    Metrics: ``loss_initial``/``loss_final`` = response-token loss on the first training batch
    before/after training; ``train_loss`` = Trainer's mean step loss; token counts and throughput.
    """
    model, tok = lora_model(base, cfg)
    examples, dropped = encode_rows(tok, rows, cfg.max_len)
    if not examples:
        raise SSTMError(f"no training row keeps a response token within --max-len {cfg.max_len}")
    if dropped:
        warn(f"{len(dropped)} of {len(rows)} rows have no response token within --max-len {cfg.max_len}; skipped")
    collator = partial(collate, pad_id=tok.pad_token_id)
    probe = collator(examples[: cfg.batch_size])
    with tempfile.TemporaryDirectory(prefix="sstm-trainer-") as scratch, contextlib.ExitStack() as bars, \
            quiet_library_warnings():
        trainer = make_trainer(model, examples, cfg, device, scratch, collator)
        trainer.add_callback(_progress_callback(bars, f"train {cfg.role}"))
        loss_initial = batch_loss(model, probe)
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        loss_final = batch_loss(model, probe)
        main = trainer.is_world_process_zero()
    if main:
        model.save_pretrained(out, save_embedding_layers=False)
    tokens = sum(len(e["input_ids"]) for e in examples) * cfg.epochs
    return {
        "loss_initial": loss_initial,
        "loss_final": loss_final,
        "train_loss": float(result.training_loss),
        "train_steps": float(result.global_step),
        "train_examples": float(len(examples)),
        "rows_dropped": float(len(dropped)),
        "train_tokens": float(tokens),
        "response_tokens": float(sum(sum(t != -100 for t in e["labels"]) for e in examples) * cfg.epochs),
        "train_seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }


def _world() -> tuple[int, int]:
    """(rank, world size) under accelerate/torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def train(reg: Registry, cfg: TrainConfig) -> Artifact:
    """The `adapter` artifact for `cfg`: trained now, or a cache hit when these exact inputs were trained before."""
    cfg.check()
    device = pick_device(cfg.device)
    base = resolve_base(reg, cfg.model)
    tok = base_tokenizer(base)
    data = training_data(reg, cfg, base, tok)
    rows = load_rows(data)
    rank, world = _world()
    params = {
        "role": cfg.role, "rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout,
        "target_modules": sorted(cfg.target_modules), "lr": cfg.lr, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "world_size": world, "warmup": cfg.warmup,
        "scheduler": "linear", "optimizer": "adamw", "max_len": cfg.max_len, "seed": cfg.seed,
        "dtype": dtype_name(cfg.dtype), "device_type": device.split(":")[0],
        "samples": len(rows),
    }
    inputs = {"base": base, "data": data}
    code = code_fingerprint(*CODE)
    label = f"{cfg.role} r{cfg.rank} n{len(rows)}"

    def build(out: Path) -> dict[str, float]:
        return fit(base, rows, cfg, out, device)

    if world == 1:
        return reg.get_or_build("adapter", params, inputs, code, build, label=label, seed=cfg.seed)
    return _train_distributed(reg, params, inputs, code, build, label, cfg.seed, rank)


def base_tokenizer(base: Artifact):
    """The tokenizer of a base artifact, pad token set (the model is not loaded)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _train_distributed(reg, params, inputs, code, build, label, seed, rank, wait_s: float = 600) -> Artifact:
    """Every rank trains; rank 0 builds and registers; the others train into scratch, then pick it up."""
    input_ids = {k: v.id for k, v in inputs.items()}
    aid = artifact_id("adapter", json.loads(canonical_json(params)), input_ids, code)
    hit = reg.find(aid)
    if hit is not None:  # every rank sees the same registry: all skip together
        return hit
    if rank == 0:
        return reg.get_or_build("adapter", params, inputs, code, build, label=label, seed=seed)
    with tempfile.TemporaryDirectory(prefix="sstm-rank-") as scratch:
        build(Path(scratch))
    deadline = time.time() + wait_s
    while (art := reg.find(aid)) is None:
        if time.time() > deadline:
            raise SSTMError(f"rank {rank}: rank 0 did not register adapter {aid[:12]} within {wait_s:.0f} s")
        time.sleep(0.5)
    return art


# --------------------------------------------------------------------------- --from-dir


def _meta_modules(base: Artifact) -> dict[str, torch.nn.Module]:
    """The base model's modules by name, instantiated on the meta device (no weights loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base.path))
    return dict(model.named_modules())


def _module_dims(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or Embedding (as y = ΔW x), None otherwise."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    return None


def check_adapter_fits(path: Path, tensors: dict[str, tuple], base: Artifact) -> list[str]:
    """Check every LoRA tensor against the base module it adapts; returns the adapted module names.

    For y = W x + B A x: lora_A of module m has shape (r, in_features(m)) and lora_B has
    (out_features(m), r) (an Embedding counts as in = num_embeddings, out = embedding_dim).
    """
    modules = _meta_modules(base)
    names = set()
    for key, shape in tensors.items():
        if ".lora_" not in key:
            continue
        which = "A" if (".lora_A" in key or ".lora_embedding_A" in key) else "B"
        mod = key.split(".lora_")[0].removeprefix("base_model.model.")
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
        names.add(mod.split(".")[-1])
    if not names:
        raise SSTMError(f"adapter {path}: adapter_model.safetensors holds no LoRA tensors")
    return sorted(names)


def register_adapter_dir(reg: Registry, path: str | Path, role: str, base: Artifact) -> Artifact:
    """Register an existing PEFT LoRA adapter directory as an `adapter` artifact on `base`.

    Only the lora_A/lora_B tensors are kept (embedding copies PEFT may have saved are
    dropped; they equal the base weights); the adapter must fit the base module by module.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    if role not in ROLES:
        raise SSTMError(f"--role {role}: expected one of {', '.join(ROLES)}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SSTMError(f"--from-dir {path}: not a directory")
    config_path, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_path.is_file():
        raise SSTMError(f"--from-dir {path}: no adapter_config.json (not a PEFT adapter directory)")
    if not weights.is_file():
        hint = " (adapter_model.bin found: re-save it with safe_serialization=True)" if (path / "adapter_model.bin").exists() else ""
        raise SSTMError(f"--from-dir {path}: no adapter_model.safetensors{hint}")
    try:
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SSTMError(f"{config_path}: not valid JSON ({e})") from None
    if adapter_config.get("peft_type") != "LORA":
        raise SSTMError(f"--from-dir {path}: peft_type is {adapter_config.get('peft_type')}, only LORA adapters are supported")
    if adapter_config.get("modules_to_save"):
        raise SSTMError(f"--from-dir {path}: modules_to_save ({adapter_config['modules_to_save']}) is not supported")
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError on a corrupt header
        raise SSTMError(f"{weights}: not a readable safetensors file ({e})") from None
    modules = check_adapter_fits(path, shapes, base)
    lora_keys = [k for k in shapes if ".lora_" in k]
    params = {"role": role, "source": "dir", "sha256": sha256_file(weights),
              "config_sha256": sha256_file(config_path), "rank": adapter_config.get("r"),
              "alpha": adapter_config.get("lora_alpha"), "target_modules": modules,
              "declared_base": adapter_config.get("base_model_name_or_path")}

    def build(out: Path) -> None:
        shutil.copyfile(config_path, out / "adapter_config.json")
        if len(lora_keys) == len(shapes):
            shutil.copyfile(weights, out / "adapter_model.safetensors")
        else:
            with safe_open(str(weights), framework="pt") as f:
                save_file({k: f.get_tensor(k) for k in lora_keys}, str(out / "adapter_model.safetensors"),
                          metadata={"format": "pt"})

    return reg.get_or_build("adapter", params, {"base": base}, code_fingerprint(*CODE), build,
                            label=f"{role} (from {path.name})")


__all__ = ["QUICK", "ROLES", "TARGET_MODULES", "TrainConfig", "fit", "quick", "register_adapter_dir", "train"]
