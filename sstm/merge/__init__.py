"""Merging a utility and a safety LoRA adapter.

* :mod:`sstm.merge.methods`: the method registry (every method and its parameters);
* :mod:`sstm.merge.baselines`: task arithmetic, TIES, DARE (per-module methods) and the
  stage that applies a per-module method to every module;
* :mod:`sstm.merge.sst`: SST-Merge, which builds through its own stage (it needs Fishers);
* the published peers (docs/method.md §13): :mod:`sstm.merge.resta` (per-module) and the stages
  :mod:`sstm.merge.safe_lora`, :mod:`sstm.merge.safemerge`, :mod:`sstm.merge.regmean`,
  :mod:`sstm.merge.fisher_avg` (sharing :mod:`sstm.merge.peers`).

Each stage returns one `merged` artifact per sweep point. This package stays
import-light (no torch) so that the CLI starts fast.
"""

from sstm.merge import baselines, resta  # register the per-module methods
from sstm.merge.methods import METHODS, MergeMethod, Param, check_weights, merge_method

__all__ = ["METHODS", "MergeMethod", "Param", "baselines", "check_weights", "merge_method", "resta"]
