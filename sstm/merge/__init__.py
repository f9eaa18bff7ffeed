"""Merging a utility and a safety LoRA adapter (docs/method.md).

* :mod:`sstm.merge.method`: what a method is (:class:`MergeMethod`: config, build, data pass, controls)
  and the registry :data:`METHODS`; :mod:`sstm.merge.param` and :mod:`sstm.merge.space` its parameters
  and their search ranges; :mod:`sstm.merge.layer_weights` the layer weights ℓ every method applies;
* :mod:`sstm.merge.methods`: one module per method (SST-Merge, task arithmetic, TIES, DARE, and the
  published peers of docs/method.md §13), registered on import; SST-Merge's linear algebra is
  :mod:`sstm.merge.gevp` and :mod:`sstm.merge.kfac`;
* :mod:`sstm.merge.stage`: the one stage that runs any method (load, data pass, sweep, get-or-build,
  diagnostics), imported when a merge runs.

Import-light (no torch): the CLI generates its merge commands from :data:`METHODS` at start-up.
"""

from sstm.merge import methods  # noqa: F401 (registers every method)
from sstm.merge.method import METHODS, MergeConfig, MergeMethod, get_method, register
from sstm.merge.param import Param, check_weights

__all__ = ["METHODS", "MergeConfig", "MergeMethod", "Param", "check_weights", "get_method", "register"]
