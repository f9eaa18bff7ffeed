"""The eval stage's settings: one source for their defaults, checked when a config is made.

`sstm eval`'s options default to None and fall back to these fields; `sstm run`'s
presets (:mod:`sstm.presets`) set only what differs from them. A bad value raises a
one-line SSTMError naming the option before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sstm.errors import SSTMError
from sstm.evaluate.judge import DEFAULT_JUDGE, load_judge
from sstm.evaluate.suites import SUITES, get_suites
from sstm.registry import Artifact

DEFAULT_SUITES = tuple(SUITES)


@dataclass
class EvalConfig:
    model: str | Artifact  # artifact id/prefix (base, adapter, merged) or a PEFT adapter directory
    suites: tuple[str, ...] = DEFAULT_SUITES
    samples: int | None = None  # rows per suite (None: the whole held-out split)
    # rows decoded together: at 200 rows per suite 64 slots eval a model 15 % faster than 32, texts identical
    # (bench/bench_eval.py); about 1 GB of cache for SmolLM2 at 600 columns
    batch_size: int = 64
    max_new_tokens: int = 128
    judge: str = DEFAULT_JUDGE  # built-in judge name (judge.BUILTIN), hf:MODEL or a file of refusal phrases
    max_context_tokens: int | None = 1024  # budget of every prompt, repliqa documents, default jailbreak templates
    # suite -> a file, a `dataset` artifact or its id (entries of suites not evaluated are ignored)
    data: dict[str, str | Artifact] = field(default_factory=dict)
    base_model: str | None = None  # base model of a PEFT directory (default: the embedded SmolLM2)
    role: str | None = None  # role recorded when registering a PEFT directory
    device: str | None = "auto"
    dtype: str = "float32"
    fold_lora: bool = True  # eval an adapter/merge with its LoRA folded into the weights (stage.fold_lora)
    sample_seed: int = 0  # which rows `samples` draws

    def __post_init__(self) -> None:
        from sstm.models import dtype_name  # lazy: torch stays out of CLI start-up (loaded when a config is made)

        self.suites = tuple(s.name for s in get_suites(self.suites))
        for flag, value in (("--samples", self.samples), ("--batch-size", self.batch_size),
                            ("--max-new-tokens", self.max_new_tokens),
                            ("--max-context-tokens", self.max_context_tokens)):
            if value is not None and value < 1:
                raise SSTMError(f"{flag} {value}: must be at least 1")
        dtype_name(self.dtype)
        load_judge(self.judge)
        unknown = sorted(set(self.data) - set(SUITES))
        if unknown:
            raise SSTMError(f"data given for unknown suite {unknown[0]} (suites: {', '.join(SUITES)})")
