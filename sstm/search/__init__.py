"""`sstm search`: the merge that meets the user's safety constraints at the least utility cost (docs/method.md §15).

For every method m of ``--methods``, one optuna study ``<study>:<m>`` (the same trial budget per method)
draws the method's knobs (w and the others' declared search ranges, ``Param.search``) and one
layer-weight factor per module group ℓ_g ∈ [1/4, 4], log-uniform (lm_head, attention, MLP) and scores the merge on **calibration data only**:

* r = jailbreak refusal on ``safety/calib`` (bare and wrapped), constraint r ≥ r_min;
* o = over-refusal on ``benign/calib``, constraint o ≤ o_max;
* u = ROUGE-L on ``utility/calib`` (documents disjoint from the test questions), the objective, maximised.

optuna's constrained TPE sampler (c-TPE) reads each trial's constraints, ``trial.set_constraint``:
c = (r_min − r, o − o_max), feasible iff c ≤ 0. Relative constraints resolve against the inputs' own calibration evals: ``safety`` = the safety
adapter's refusal r_S, ``utility+0.05`` = the utility adapter's over-refusal + 0.05.

Cheap trials (a sequential interval test): each refusal split is read in the blocks of ``sstm calibrate``
(:func:`sstm.calibrate.probe_blocks`: the calibration rows in a seeded order, 16 prompts a block, each block a
dataset and an eval, so reading more blocks reuses the first ones). After each block, when the exact
95 % interval of the rate read so far excludes the constraint (its upper end < r_min, or its lower end >
o_max), the trial is pruned (``optuna.TrialPruned``) and scores nothing more; otherwise it reads every
block and is scored in full. ``prune=False`` reads every block of every trial.

Every merge and eval is a registry artifact (a rerun is cache hits); the studies live in optuna's RDB
storage (``<home>/search.db`` or ``--storage URL``), so a rerun or a second process continues them, up to
N finished trials per method. Selection: the highest u among feasible trials; if none is feasible, the
trial with the smallest total violation Σ max(c, 0) (ties: higher u). The selected merge is registered
as its own `merged` artifact carrying the search record (param ``search``), and only it (and the best
task-arithmetic trial, for the paired Δ) is evaluated on the test split.

The package, in dependency order: :mod:`~sstm.search.config` (the constraints, budget and study key),
:mod:`~sstm.search.space` (what a study draws), :mod:`~sstm.search.scoring` (a trial's scores, the interval
test, the registry scorer), :mod:`~sstm.search.study` (trials, studies, selection), :mod:`~sstm.search.run`
(one search: register, test, replay); :mod:`~sstm.search.report` is its output, outside the code fingerprint.
"""

from sstm.search.config import Bound, SearchConfig, parse_bound
from sstm.search.run import SEARCH, TEST_SUITES, Outcome, register_selection, replay_selection, search
from sstm.search.scoring import Score
from sstm.search.space import merge_settings, method_space, spaces
from sstm.search.study import SearchResult, TrialRecord, run_studies, select

__all__ = ["SEARCH", "TEST_SUITES", "Bound", "Outcome", "Score", "SearchConfig", "SearchResult", "TrialRecord",
           "merge_settings", "method_space", "parse_bound", "register_selection", "replay_selection", "run_studies",
           "search", "select", "spaces"]
