"""The merge methods, one module each; importing this package registers them all in
:data:`sstm.merge.method.METHODS`, in this order (the CLI lists them so; SST-Merge first).

A new method is one module here (its config, build and :func:`~sstm.merge.method.register` call) and
one line below.
"""

from sstm.merge.methods import sst, ta, ties, dare, resta, safe_lora, safemerge, regmean, fisher_avg  # noqa: F401, I001

__all__ = ["dare", "fisher_avg", "regmean", "resta", "safe_lora", "safemerge", "sst", "ta", "ties"]
