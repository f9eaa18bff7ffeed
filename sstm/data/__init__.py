"""Datasets as content-addressed `dataset` artifacts.

Every split a stage uses is materialized as ``rows.jsonl`` and registered under the
hash of its rows, so a result names the exact rows it saw. A row is a dict with

  * ``prompt``   — the user turn (for utility rows: the question),
  * ``response`` — the target / reference answer,
  * ``context``  — optional document shown before the question (truncated to the
    context budget when encoded, see :mod:`sstm.chat`),

plus any metadata fields (``answerable``, ``template_id``, ``request_id``, ...).
"""

from sstm.data.benign import benign_split
from sstm.data.files import read_table
from sstm.data.mmlu import mmlu_split
from sstm.data.roles import ROLE_SPLITS, role_dataset, role_split
from sstm.data.rows import ROWS_FILE, load_rows, register_rows, rows_sha256, write_rows
from sstm.data.safety import safety_split
from sstm.data.sources import DataUnavailable, sample_indices
from sstm.data.utility import utility_split

__all__ = ["ROLE_SPLITS", "ROWS_FILE", "DataUnavailable", "benign_split", "load_rows", "mmlu_split", "read_table",
           "register_rows", "role_dataset", "role_split", "rows_sha256", "safety_split", "sample_indices",
           "utility_split", "write_rows"]
