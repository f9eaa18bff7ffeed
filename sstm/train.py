"""`sstm train`: LoRA supervised fine-tuning of a utility or a safety adapter.

One stage function, :func:`train`, builds an ``adapter`` artifact through the
registry: inputs ``base`` (the base model) and ``data`` (the training split, itself a
registered ``dataset``); params hold every training choice. Same inputs -> same id
-> a cache hit, no training.

Training is plain transformers ``Trainer`` + PEFT LoRA on q/k/v/o/gate/up/down and
lm_head (ΔW = (alpha/r)·B·A per module, B initialised to 0 so training starts at the
base model). The loss is the mean next-token cross-entropy over *response* tokens
only: :func:`sstm.chat.encode_example` labels the prompt -100. The adapter is
saved with ``save_embedding_layers=False`` (only lora_A/lora_B, never the full
embedding/lm_head weights PEFT would otherwise copy because lm_head is a target).

Multi-GPU: run the same command under accelerate, e.g.
``accelerate launch -m sstm.cli train --role safety --dtype bf16``. Trainer
shards batches across processes; every rank trains, rank 0 alone registers the
artifact (:func:`sstm.distributed.get_or_build`: the others train into a scratch
directory and then read the same id; a rank that fails leaves nothing registered),
and the world size is part of the params because it multiplies the effective batch size. (Checked on CPU with
``torchrun --nproc_per_node 2 -m sstm.cli train ... --device cpu``, the launcher
accelerate uses for multi-GPU runs.)

Ctrl-C: ``Trainer`` does not catch KeyboardInterrupt; its output dir is a
``TemporaryDirectory`` inside the build and the registry's build is atomic, so an
interrupted run leaves nothing registered and no stray directory.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from sstm import distributed
from sstm.adapters import check_role, save_peft
from sstm.chat import collate, encode_rows
from sstm.data import load_rows
from sstm.data.safety import DIRECT_FRACTION, check_direct_fraction
from sstm.errors import SSTMError
from sstm.models import DTYPES, EMBEDDED, autocast_dtype, dtype_name, load_base, pick_device, resolve_base
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.train_data import RESERVED_TOKENS, training_data
from sstm.ui import progress, quiet_library_warnings, warn

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


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
    # (without them a safety adapter learns to refuse everything); chosen on the calibration split,
    # docs/method.md §14
    benign_fraction: float = 0.5
    # embedded safety data only: share of harmful rows that are the bare request (the rest are wrapped
    # in a jailbreak template); its one source is sstm.data.safety.DIRECT_FRACTION
    direct_fraction: float = DIRECT_FRACTION
    # embedded safety data only: draw harmful requests from each harm category in turn instead of in
    # the pool's proportions (four in five from Do-Not-Answer); docs/method.md §14
    balance_harms: bool = False
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        """Every option checked before anything is built: one line naming the option."""
        check_role(self.role)
        for name in ("rank", "alpha", "batch_size", "grad_accum", "max_len"):
            if getattr(self, name) < 1:
                raise SSTMError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        for name in ("epochs", "lr"):
            if not getattr(self, name) > 0:
                raise SSTMError(f"--{name} {getattr(self, name)}: must be positive")
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
        if self.data is not None and self.benign_fraction != type(self).benign_fraction:
            raise SSTMError(f"--benign-fraction {self.benign_fraction}: applies to the embedded safety data only; "
                            f"--data {self.data} is used as given (put benign rows in the file instead)")
        check_direct_fraction(self.direct_fraction)
        for option, given in ((f"--direct-fraction {self.direct_fraction}",
                               self.direct_fraction != type(self).direct_fraction),
                              ("--balance-harms", self.balance_harms)):
            if given and (self.data is not None or self.role != "safety"):
                raise SSTMError(f"{option}: applies to the embedded safety data only"
                                + (f"; --data {self.data} is used as given" if self.data is not None
                                   else f", not to --role {self.role}"))
        if not (self.warmup >= 0 and (self.warmup < 1 or float(self.warmup).is_integer())):
            raise SSTMError(f"--warmup {self.warmup}: expected a step count or a ratio in [0, 1)")
        if not DEVICE.match(self.device):
            raise SSTMError(f"--device {self.device}: expected auto, cpu, mps, cuda or cuda:N")


# --------------------------------------------------------------------------- data


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
    if device.startswith("cuda:") and distributed.world().size == 1:
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
        bf16=DTYPES[cfg.dtype] is torch.bfloat16 or autocast_dtype(device, cfg.dtype) is not None,
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
        save_peft(model, out)
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


def train(reg: Registry, cfg: TrainConfig) -> Artifact:
    """The `adapter` artifact for `cfg`: trained now, or a cache hit when these exact inputs were trained before."""
    device = pick_device(cfg.device)
    base = resolve_base(reg, cfg.model)
    data = training_data(reg, cfg, base, base_tokenizer(base))
    rows = load_rows(data)
    params = {
        "role": cfg.role, "rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout,
        "target_modules": sorted(cfg.target_modules), "lr": cfg.lr, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "world_size": distributed.world().size, "warmup": cfg.warmup,
        "scheduler": "linear", "optimizer": "adamw", "max_len": cfg.max_len, "seed": cfg.seed,
        "dtype": dtype_name(cfg.dtype), "device_type": device.split(":")[0],
        "autocast": autocast_dtype(device, cfg.dtype),
        "samples": len(rows),
    }
    inputs = {"base": base, "data": data}
    code = code_fingerprint(__name__)
    label = f"{cfg.role} r{cfg.rank} n{len(rows)}"

    def build(out: Path) -> dict[str, float]:
        return fit(base, rows, cfg, out, device)

    return distributed.get_or_build(reg, "adapter", params, inputs, code, build, label=label, seed=cfg.seed)


def base_tokenizer(base: Artifact):
    """The tokenizer of a base artifact, pad token set (the model is not loaded)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


__all__ = ["TARGET_MODULES", "TrainConfig", "fit", "train"]
