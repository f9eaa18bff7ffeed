"""The defaults of a data pass over an adapter's own data: the Fishers of SST-Merge (:mod:`sstm.fisher`),
the Gram matrices and diagonal Fishers of RegMean and Fisher merging (:mod:`sstm.weight_stats`).

One home for them, import-light, so that the merge methods' configs (read by the CLI at start-up)
default to what the data pass itself does.
"""

SAMPLES = 128  # rows per role; 256 gave no better merge than 128 on the embedded default (docs/method.md §7)
BATCH_SIZE = 8
MAX_LEN = 512  # token budget per example
DTYPE = "float32"
STRUCTURES = ("full", "kfac")  # a Fisher per module: r²×r², or two r×r Kronecker factors (docs/scale.md)
