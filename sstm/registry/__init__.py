"""Content-addressed artifact registry: SQLite (via SQLModel) + ``artifacts/<kind>/<id>/``.

* :mod:`~sstm.registry.ids`: an artifact's id, ``sha256(canonical_json({kind, params, inputs, code}))``,
  with ``code`` the fingerprint of the stage's import closure. Same inputs -> same id -> a cache hit.
* :mod:`~sstm.registry.files`: file hashes, whole-file writes, read-only trees, the cheap damage check.
* :mod:`~sstm.registry.schema`: the tables, the :class:`Artifact` record, opening ``registry.db``.
* :mod:`~sstm.registry.store`: :class:`Registry`: atomic get-or-build under per-id locks, verify, gc.
* :mod:`~sstm.registry.replay`: the rebuild hook of ``sstm verify --rebuild``.
"""

from sstm.provenance import PACKAGE_DIR, major_minor
from sstm.registry.files import damage, describe_damage, hash_tree, sha256_file, split_mtimes, write_whole
from sstm.registry.ids import (FINGERPRINT_EXCLUDED, artifact_id, canonical_json, code_fingerprint, excluded,
                               import_closure)
from sstm.registry.replay import Rebuild, RebuildMismatch, rebuilding
from sstm.registry.schema import KINDS, SCHEMA_VERSION, TMP_PREFIX, Artifact
from sstm.registry.store import BuildFn, Registry, default_home

__all__ = ["FINGERPRINT_EXCLUDED", "KINDS", "PACKAGE_DIR", "SCHEMA_VERSION", "TMP_PREFIX", "Artifact", "BuildFn",
           "Rebuild", "RebuildMismatch", "Registry", "artifact_id", "canonical_json", "code_fingerprint", "damage",
           "default_home", "describe_damage", "excluded", "hash_tree", "import_closure", "major_minor", "rebuilding",
           "sha256_file", "split_mtimes", "write_whole"]
