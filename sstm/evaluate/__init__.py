"""Evaluation: batched greedy generation, refusal / ROUGE-L / MMLU suites, `eval` artifacts.

See :mod:`sstm.evaluate.stage` for the artifact format that `compare` reads.
"""

from sstm.evaluate.generate import Generation, generate, next_token_logprobs
from sstm.evaluate.judge import GCG_TEST_PREFIXES, RefusalJudge, load_judge
from sstm.evaluate.stage import DEFAULT_SUITES, QUICK, EvalConfig, evaluate, result_rows
from sstm.evaluate.suites import SUITES, get_suites, rouge_l

__all__ = [
    "DEFAULT_SUITES", "GCG_TEST_PREFIXES", "QUICK", "SUITES", "EvalConfig", "Generation", "RefusalJudge",
    "evaluate", "generate", "get_suites", "load_judge", "next_token_logprobs", "result_rows", "rouge_l",
]
