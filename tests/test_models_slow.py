"""The embedded SmolLM2-135M-Instruct: GGUF -> registered `base` artifact, then cache hits."""

from __future__ import annotations

import time

import pytest

from sstm import models
from sstm.registry import sha256_file
from sstm.train import TARGET_MODULES


@pytest.mark.slow
def test_embedded_smollm2_registered_once(reg, monkeypatch):
    base = models.resolve_base(reg, models.EMBEDDED)
    assert base.kind == "base" and base.label == "SmolLM2-135M-Instruct"
    assert base.params["source"] == "gguf" and base.params["sha256"] == sha256_file(models.embedded_gguf())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(base.files)

    def no_conversion(*a, **k):
        raise AssertionError("converted the GGUF again")

    monkeypatch.setattr(models, "_load_source", no_conversion)
    again = models.resolve_base(reg, models.EMBEDDED)
    assert again.id == base.id and [a.id for a in reg.list("base")] == [base.id]

    t0 = time.perf_counter()
    model, tok = models.load_base(again)
    assert time.perf_counter() - t0 < 15  # safetensors, not a GGUF dequantisation
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert set(TARGET_MODULES) <= names
    assert tok.pad_token == "<|im_end|>" and "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
