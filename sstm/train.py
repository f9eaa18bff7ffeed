"""`sstm train`: LoRA supervised fine-tuning of a utility or a safety adapter.

One stage function, :func:`train`, builds an ``adapter`` artifact through the
registry: inputs ``base`` (the base model) and ``data`` (the training split, itself a
registered ``dataset``); params hold every training choice. Same inputs -> same id
-> a cache hit, no training.

Objectives (``--objective``, :data:`OBJECTIVES`): ``sft`` (the default, below); ``dpo`` -- TRL's
``DPOTrainer`` on preference pairs (:mod:`sstm.data.pairs`: harmful request -> its refusal over the
base model's compliance, benign look-alike -> the base model's answer over a refusal), the same fresh
LoRA, the base model as reference (the adapter disabled), loss
``-log σ(β[(log π/π_ref)(chosen) - (log π/π_ref)(rejected)])`` for ``--loss-type sigmoid``;
``sft+dpo`` -- the SFT adapter of the same settings (registered, an input of this one), trained
further by DPO with itself (its frozen copy) as reference. Same adapter format, rank and targets
whatever the objective; the objective and its settings (β, loss type, lr, epochs) are params.

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
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from sstm import distributed
from sstm.adapters import check_role, save_peft
from sstm.chat import _turn_ids, collate, cut_middle, encode_rows
from sstm.data import load_rows
from sstm.data.safety import DIRECT_FRACTION, check_direct_fraction
from sstm.errors import SSTMError
from sstm.models import DTYPES, EMBEDDED, autocast_dtype, dtype_name, load_base, pick_device, resolve_base
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.train_data import RESERVED_TOKENS, preference_data, training_data
from sstm.ui import progress, quiet_library_warnings, warn

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
OBJECTIVES = ("sft", "dpo", "sft+dpo")  # `--objective`: supervised, preference (DPO), SFT then DPO
# `--loss-type`: TRL DPO losses that need no further option (sigmoid = DPO, ipo = IPO, hinge = SLiC, ...)
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "sigmoid_norm", "apo_zero", "apo_down")


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
    # `--objective`: sft, dpo or sft+dpo (DPO through TRL; safety role only); docs/method.md §16
    objective: str = "sft"
    beta: float = 0.1  # DPO: strength of the pull towards the reference (TRL DPOConfig.beta)
    loss_type: str = "sigmoid"  # DPO: the TRL loss (:data:`LOSS_TYPES`)
    dpo_lr: float | None = None  # the DPO stage's learning rate (None: `lr`)
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
        if self.objective not in OBJECTIVES:
            raise SSTMError(f"--objective {self.objective}: expected one of {', '.join(OBJECTIVES)}")
        if self.objective != "sft" and self.role != "safety":
            raise SSTMError(f"--objective {self.objective}: preference training is for --role safety "
                            f"(not {self.role})")
        if self.objective == "sft+dpo" and self.data is not None:
            raise SSTMError(f"--objective sft+dpo: trains on the embedded data only (--data {self.data} holds either "
                            "responses or preference pairs; use --objective sft or dpo with it)")
        if self.loss_type not in LOSS_TYPES:
            raise SSTMError(f"--loss-type {self.loss_type}: expected one of {', '.join(LOSS_TYPES)}")
        if not self.beta > 0:
            raise SSTMError(f"--beta {self.beta}: must be positive")
        if self.dpo_lr is not None and not self.dpo_lr > 0:
            raise SSTMError(f"--dpo-lr {self.dpo_lr}: must be positive")
        default = type(self)
        for option, given in ((f"--beta {self.beta}", self.beta != default.beta),
                              (f"--loss-type {self.loss_type}", self.loss_type != default.loss_type),
                              (f"--dpo-lr {self.dpo_lr}", self.dpo_lr is not None)):
            if given and self.objective == "sft":
                raise SSTMError(f"{option}: applies to --objective dpo or sft+dpo only")
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


# --------------------------------------------------------------------------- preference training (TRL DPO)


def _dpo_arguments(cfg: TrainConfig, device: str, output_dir: str):
    """TRL's DPOConfig with sstm's training settings (those of :func:`_training_arguments`) and the DPO ones."""
    from trl import DPOConfig

    common = _training_arguments(cfg, device, output_dir).to_dict()
    keep = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "lr_scheduler_type",
            "warmup_steps", "weight_decay", "logging_strategy", "logging_steps", "save_strategy", "eval_strategy",
            "report_to", "disable_tqdm", "seed", "data_seed", "use_cpu", "bf16", "fp16", "dataloader_num_workers",
            "dataloader_pin_memory", "ddp_find_unused_parameters")
    return DPOConfig(output_dir=output_dir, **{k: common[k] for k in keep}, learning_rate=cfg.dpo_lr or cfg.lr,
                     beta=cfg.beta, loss_type=[cfg.loss_type], max_length=cfg.max_len,
                     gradient_checkpointing=False, activation_checkpointing=False, disable_dropout=cfg.dropout == 0)


def _fit_prompt(tok, pair: dict, max_len: int) -> str:
    """The pair's prompt, its middle cut (:func:`sstm.chat.cut_middle`) so that the chat markup, the prompt and the
    longer completion fit `max_len` tokens: TRL truncates at the end, which would cut the completions."""
    p_ids, c_ids = zip(*(_turn_ids(tok, pair["prompt"], pair[k]) for k in ("chosen", "rejected")))
    excess = len(p_ids[0]) + max(map(len, c_ids)) - max_len
    if excess <= 0:
        return pair["prompt"]
    keep = len(tok(pair["prompt"], add_special_tokens=False)["input_ids"]) - excess - 8
    return cut_middle(tok, pair["prompt"], keep) if keep > 16 else pair["prompt"]


def fit_dpo(base: Artifact, pairs: list[dict], cfg: TrainConfig, out: Path, device: str,
            init: Artifact | None = None) -> dict[str, float]:
    """DPO (TRL ``DPOTrainer``) of a LoRA adapter on (prompt, chosen, rejected) `pairs`, saved into `out`.

    `init` None: a fresh LoRA of :func:`lora_config` (seeded as for SFT), whose reference is the base model
    (TRL's frozen ``ref`` copy of a zero-B adapter). `init` an adapter: its weights are trained further,
    against a frozen copy of themselves. TRL computes log-probabilities from ``lm_head.weight`` directly
    (a fused head) and refuses a LoRA on ``lm_head``, so DPO trains every target but ``lm_head``; the
    saved adapter still has the same targets as SFT, ``lm_head`` as it was (B = 0 for a fresh adapter,
    ΔW = 0; the SFT adapter's for ``init``, not applied during the DPO stage). Metrics: TRL's mean step
    loss, the reward accuracy and margin of the first and the last step, pair count, seconds.
    """
    from datasets import Dataset
    from peft import set_peft_model_state_dict
    from transformers import PrinterCallback
    from trl import DPOTrainer

    head = [m for m in cfg.target_modules if m == "lm_head"]
    model, tok = lora_model(base, replace(cfg, target_modules=tuple(m for m in cfg.target_modules if m not in head)))
    if init is not None:
        set_peft_model_state_dict(model, _adapter_state(init.path, skip=head))
    turn = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    dataset = Dataset.from_list([{"prompt": turn("user", _fit_prompt(tok, p, cfg.max_len)),
                                  "chosen": turn("assistant", p["chosen"]),
                                  "rejected": turn("assistant", p["rejected"])} for p in pairs])
    with tempfile.TemporaryDirectory(prefix="sstm-dpo-") as scratch, contextlib.ExitStack() as bars, \
            quiet_library_warnings():
        trainer = DPOTrainer(model=model, ref_model=None, args=_dpo_arguments(cfg, device, scratch),
                             train_dataset=dataset, processing_class=tok)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_progress_callback(bars, f"train {cfg.role} ({cfg.objective})"))
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        main = trainer.is_world_process_zero()
        steps = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    if main:
        from peft import get_peft_model_state_dict

        trained = get_peft_model_state_dict(trainer.model, adapter_name="default")  # not TRL's "ref" copy
        full, _ = lora_model(base, cfg)  # every target of SFT, lm_head's B = 0
        if init is not None:
            set_peft_model_state_dict(full, _adapter_state(init.path))
        set_peft_model_state_dict(full, trained)
        save_peft(full, out)
    first, last = (steps[0], steps[-1]) if steps else ({}, {})
    return {
        "train_loss": float(result.training_loss),
        "train_steps": float(result.global_step),
        "train_pairs": float(len(pairs)),
        "reward_accuracy_first": float(first.get("rewards/accuracies", float("nan"))),
        "reward_accuracy_last": float(last.get("rewards/accuracies", float("nan"))),
        "reward_margin_first": float(first.get("rewards/margins", float("nan"))),
        "reward_margin_last": float(last.get("rewards/margins", float("nan"))),
        "train_seconds": seconds,
    }


def _adapter_state(path: Path, skip: list[str] = ()) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a saved PEFT adapter directory, less those of the modules in `skip`."""
    from safetensors.torch import load_file

    state = load_file(str(Path(path) / "adapter_model.safetensors"))
    return {k: v for k, v in state.items() if not any(f".{m}." in k for m in skip)}


def train(reg: Registry, cfg: TrainConfig) -> Artifact:
    """The `adapter` artifact for `cfg`: trained now, or a cache hit when these exact inputs were trained before."""
    if cfg.objective != "sft":
        return _train_dpo(reg, cfg)
    device = pick_device(cfg.device)
    base = resolve_base(reg, cfg.model)
    data = training_data(reg, cfg, base, base_tokenizer(base))
    rows = load_rows(data)
    params = _params(cfg, device, len(rows))
    inputs = {"base": base, "data": data}
    code = code_fingerprint(__name__)
    label = f"{cfg.role} r{cfg.rank} n{len(rows)}"

    def build(out: Path) -> dict[str, float]:
        return fit(base, rows, cfg, out, device)

    return distributed.get_or_build(reg, "adapter", params, inputs, code, build, label=label, seed=cfg.seed)


def _train_dpo(reg: Registry, cfg: TrainConfig) -> Artifact:
    """`--objective dpo` / `sft+dpo`: the preference pairs (:func:`sstm.train_data.preference_data`), and for
    sft+dpo the SFT adapter of the same settings (an input, itself cached), then :func:`fit_dpo`."""
    device = pick_device(cfg.device)
    base = resolve_base(reg, cfg.model)
    init = train(reg, replace(cfg, objective="sft", beta=TrainConfig.beta, loss_type=TrainConfig.loss_type,
                              dpo_lr=None)) if cfg.objective == "sft+dpo" else None
    data = preference_data(reg, cfg, base, base_tokenizer(base))
    pairs = load_rows(data)
    params = _params(cfg, device, len(pairs)) | {
        "objective": cfg.objective,
        "dpo": {"beta": cfg.beta, "loss_type": cfg.loss_type, "lr": cfg.dpo_lr or cfg.lr, "epochs": cfg.epochs,
                "reference": "init adapter" if init else "base", "trainer": "trl.DPOTrainer"}}
    inputs = {"base": base, "data": data} | ({"init": init} if init else {})
    label = f"{cfg.role} {cfg.objective} r{cfg.rank} n{len(pairs)}"

    def build(out: Path) -> dict[str, float]:
        return fit_dpo(base, pairs, cfg, out, device, init)

    return distributed.get_or_build(reg, "adapter", params, inputs, code_fingerprint(__name__), build, label=label,
                                    seed=cfg.seed)


def _params(cfg: TrainConfig, device: str, n_rows: int) -> dict:
    """The params every adapter records (SFT's; DPO adds its own)."""
    return {
        "role": cfg.role, "rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout,
        "target_modules": sorted(cfg.target_modules), "lr": cfg.lr, "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "world_size": distributed.world().size, "warmup": cfg.warmup,
        "scheduler": "linear", "optimizer": "adamw", "max_len": cfg.max_len, "seed": cfg.seed,
        "dtype": dtype_name(cfg.dtype), "device_type": device.split(":")[0],
        "autocast": autocast_dtype(device, cfg.dtype),
        "samples": n_rows,
    }


def base_tokenizer(base: Artifact):
    """The tokenizer of a base artifact, pad token set (the model is not loaded)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


__all__ = ["LOSS_TYPES", "OBJECTIVES", "TARGET_MODULES", "TrainConfig", "fit", "fit_dpo", "train"]
