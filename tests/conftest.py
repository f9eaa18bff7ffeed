import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import save_tiny  # noqa: E402

from sstm.registry import Registry  # noqa: E402


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty SSTM_HOME."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SSTM_HOME", str(h))
    return h


@pytest.fixture
def reg(home):
    return Registry(home)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Llama + tokenizer directory (usable as `--model DIR`)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_base(reg, tiny_model_dir):
    """The tiny model registered as a `base` artifact in `reg`."""
    from sstm.models import resolve_base

    return resolve_base(reg, str(tiny_model_dir))
