"""sstm: safety-aware merging of LoRA adapters (SST-Merge) with a content-addressed registry."""

__version__ = "0.1.0"
