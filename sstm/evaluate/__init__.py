"""Evaluation: refusal / ROUGE-L / MMLU suites and the `eval` stage.

Modules: ``suites`` (what each suite reads, reports and computes), ``config``
(EvalConfig and its defaults), ``judge`` (the refusal judge), ``data`` (a suite's
dataset), ``record`` (the files of an `eval` artifact), ``stage`` (the stage).

The names below are imported on first use, so reading the suite registry (the
CLI builds its options from it) does not load torch.
"""

from importlib import import_module

_EXPORTS = {"EvalConfig": "config", "evaluate": "stage"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"sstm.evaluate.{_EXPORTS[name]}"), name)
