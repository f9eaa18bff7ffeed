"""Code fingerprints follow the import graph; numeric library versions and Hub revisions are part of ids."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import sstm.registry as registry
import sstm.registry.ids as ids
from sstm.errors import SSTMError
from sstm.registry import PACKAGE_DIR, code_fingerprint, import_closure


def stage_modules() -> dict[str, str]:
    """The modules that define the train, Fisher and eval stages, wherever they live."""
    from sstm.evaluate import evaluate
    from sstm.fisher import fisher
    from sstm.train import train

    return {"train": train.__module__, "fisher": fisher.__module__, "eval": evaluate.__module__}


def package_copy(tmp_path: Path, name: str, edit: str | None = None) -> Path:
    """A copy of the sstm package (its own root, so no cached fingerprint applies), `edit` appended to."""
    root = shutil.copytree(PACKAGE_DIR, tmp_path / name / "sstm", ignore=shutil.ignore_patterns("__pycache__"))
    if edit:
        with open(root / edit, "a") as f:
            f.write("\nEDITED = True  # a change\n")
    return root


def test_stage_ids_follow_models_but_not_compare(tmp_path):
    stages = stage_modules()
    fingerprints = {}
    for name, edit in (("same", None), ("models", "models.py"), ("compare", "compare.py")):
        root = package_copy(tmp_path, name, edit)
        fingerprints[name] = {stage: code_fingerprint(module, root) for stage, module in stages.items()}
    # paths are hashed relative to the package: a copy elsewhere has the same fingerprints
    assert fingerprints["same"] == {stage: code_fingerprint(module) for stage, module in stages.items()}
    for stage in stages:  # models.py (pad token, dtype, loading) is in every stage; compare.py in none
        assert fingerprints["models"][stage] != fingerprints["same"][stage], stage
        assert fingerprints["compare"][stage] == fingerprints["same"][stage], stage
    assert all(fp.endswith(" torch-{0} transformers-{1} peft-{2}".format(*map(registry.major_minor, (
        "torch", "transformers", "peft")))) for fp in fingerprints["same"].values())


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


PACKAGE = {
    "__init__.py": "__version__ = '1'\n",
    "ui.py": "import rich\nfrom sstm import deep\n",
    "deep.py": "import transformers\n",
    "plain.py": "import json\nfrom sstm.ui import console\n",
    "maths.py": "import torch\n",
    "sub/__init__.py": "from . import helper\n",
    "sub/helper.py": "X = 1\n",
    "sub/stage.py": """
        from __future__ import annotations
        import os.path
        from typing import TYPE_CHECKING
        from .. import plain
        if TYPE_CHECKING:  # annotations only: never imported at run time, so not part of the id
            from sstm import unused
        def build():
            from ..maths import go  # a function-level, relative import of an attribute
            import sstm.other as o
        """,
    "other.py": "from sstm.sub import helper, CONSTANT\n",
    "unused.py": "import peft\n",
}


def test_import_closure_parses_every_import_form(tmp_path):
    root = write_package(tmp_path / "sstm", PACKAGE)
    modules, libraries = import_closure("sstm.sub.stage", root)
    # the package sstm.sub runs first (and imports helper); sstm (root) and sstm.ui are excluded and not followed
    assert modules == {"sstm.sub.stage", "sstm.sub", "sstm.sub.helper", "sstm.plain", "sstm.maths", "sstm.other"}
    assert {"torch", "os", "json", "__future__"} <= libraries and not libraries & {"transformers", "peft", "rich"}
    fp = code_fingerprint("sstm.sub.stage", root)
    assert fp.split(" ")[1:] == [f"torch-{registry.major_minor('torch')}"]
    assert code_fingerprint("sstm.plain", root).split(" ")[1:] == []  # no numeric library: no versions
    (root / "maths.py").write_text("import torch  # edited\n")
    (root / "unused.py").write_text("import peft  # edited\n")
    code_fingerprint.cache_clear()
    assert code_fingerprint("sstm.sub.stage", root) != fp
    assert code_fingerprint("sstm.plain", root) == code_fingerprint("sstm.plain", write_package(
        tmp_path / "elsewhere" / "sstm", PACKAGE)), "unrelated edits and the location do not count"
    with pytest.raises(ValueError, match="no module sstm.nope"):
        code_fingerprint("sstm.nope", root)


PACKAGES = {  # packages as the closure meets them: an __init__ that re-exports, submodules, an excluded package
    "__init__.py": "",
    "registry/__init__.py": "from sstm.registry.store import Store\nimport torch\n",
    "registry/store.py": "from sstm.registry.files import h\nclass Store: ...\n",
    "registry/files.py": "import peft\n",
    "merge/__init__.py": "from sstm.merge.methods import METHODS\n",
    "merge/methods.py": "from . import ta, sst\nMETHODS = {}\n",
    "merge/ta.py": "from .point import build\n",
    "merge/sst/__init__.py": "from .config import SSTConfig\nfrom .gevp import solve\n",
    "merge/sst/config.py": "from ...registry.files import h\n",
    "merge/sst/gevp.py": "from ..point import build\nimport scipy.linalg\n",
    "merge/point.py": "import torch\n",
    "merge/unused.py": "X = 1\n",
    "stage.py": "from sstm.merge import METHODS\nfrom sstm.registry import Store\nfrom sstm import registry\n",
}


def test_import_closure_of_packages_and_submodules(tmp_path):
    """`from sstm.merge import METHODS` runs the package's __init__, which runs its submodules (and a
    subpackage's __init__ with its relative imports, two levels up included); the registry package and all
    its submodules are excluded, however they are imported; a module of a package nobody imports is not in."""
    root = write_package(tmp_path / "sstm", PACKAGES)
    modules, libraries = import_closure("sstm.stage", root)
    assert modules == {"sstm.stage", "sstm.merge", "sstm.merge.methods", "sstm.merge.ta", "sstm.merge.sst",
                       "sstm.merge.sst.config", "sstm.merge.sst.gevp", "sstm.merge.point"}
    assert {"torch", "scipy"} <= libraries and "peft" not in libraries, "the registry's imports are not followed"
    fp = code_fingerprint("sstm.stage", root)
    for rel, counts in (("merge/sst/gevp.py", True), ("merge/sst/__init__.py", True), ("merge/unused.py", False),
                        ("registry/files.py", False), ("registry/__init__.py", False)):
        (root / rel).write_text((root / rel).read_text() + "# edited\n")
        code_fingerprint.cache_clear()
        assert (code_fingerprint("sstm.stage", root) != fp) == counts, rel
        fp = code_fingerprint("sstm.stage", root)
    # the real package: no stage hashes a module of sstm.registry (its split changed no id)
    real = {m for module in stage_modules().values() for m in import_closure(module)[0]}
    assert not {m for m in real if m.split(".")[:2] == ["sstm", "registry"]}
    assert {"sstm.models", "sstm.adapters"} <= real


def test_library_major_minor_versions_are_part_of_the_id(tmp_path, monkeypatch):
    root = write_package(tmp_path / "sstm", PACKAGE)
    fp = code_fingerprint("sstm.sub.stage", root)
    code_fingerprint.cache_clear()
    monkeypatch.setattr(ids, "major_minor", lambda lib: "99.1")
    assert code_fingerprint("sstm.sub.stage", root) == fp.split(" ")[0] + " torch-99.1"
    code_fingerprint.cache_clear()
    assert registry.artifact_id("fisher", {}, {}, fp) != registry.artifact_id("fisher", {}, {}, fp + "x")


def test_major_minor():
    from sstm.provenance import major_minor, version

    assert major_minor("torch") == ".".join(version("torch").split("+")[0].split(".")[:2])
    assert major_minor("no-such-package-xyz") == "none"


# --------------------------------------------------------------------------- Hub revisions

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_hub_model_recorded_at_its_resolved_revision(reg, tiny_model_dir, monkeypatch):
    import huggingface_hub

    from sstm import models
    from sstm.models import resolve_base

    asked = []

    def model_info(self, repo, revision=None, **kw):
        asked.append((repo, revision))
        return SimpleNamespace(sha={None: SHA, "v2": "f" * 40}[revision])

    loaded, load = [], models._load_source

    def load_source(source):
        loaded.append(source)
        return load({"source": "dir", "path": str(tiny_model_dir)})

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(models, "_load_source", load_source)
    base = resolve_base(reg, "org/model")
    assert base.params == {"source": "hub", "repo": "org/model", "revision": SHA}
    assert loaded[0]["revision"] == SHA, "the weights are loaded at the recorded commit"
    assert resolve_base(reg, "org/model").id == base.id and len(loaded) == 1
    assert resolve_base(reg, "org/model", revision="v2").params["revision"] == "f" * 40
    assert resolve_base(reg, "org/model", revision=SHA).id == base.id  # a sha needs no lookup
    assert asked == [("org/model", None)] * 2 + [("org/model", "v2")]


def test_hub_revision_offline_reads_the_cache(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    from sstm.models import hub_revision

    def offline(self, repo, revision=None, **kw):
        raise OfflineModeIsEnabled("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, revision=None, local_files_only=False: f"/cache/models--org--m/snapshots/{SHA}")
    assert hub_revision("org/m") == SHA

    def not_cached(repo, revision=None, local_files_only=False):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    with pytest.raises(SSTMError, match="org/m: cannot resolve its revision: the Hub is not reachable .offline mode"):
        hub_revision("org/m")
