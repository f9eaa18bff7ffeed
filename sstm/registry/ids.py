"""Artifact ids: canonical JSON and the code fingerprint of the stage that builds an artifact.

An artifact's id is ``sha256(canonical_json({kind, params, inputs, code}))`` where ``code`` is
:func:`code_fingerprint` of the stage that builds it: its module and every ``sstm`` module it imports,
plus the major.minor versions of the numeric libraries they import. Same inputs -> same id.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from sstm.provenance import NUMERIC_LIBRARIES, PACKAGE_DIR, major_minor


def canonical_json(obj: Any, name: str = "value") -> str:
    """Deterministic JSON: sorted keys, no whitespace, no NaN, and only values JSON encodes exactly.

    Strings, Python ints, floats, bools and None, in dicts with string keys and lists (tuples
    become lists). Anything else (a numpy scalar, a Path, a set, a dict with int keys) raises a
    TypeError naming where it is (``params.k``, with `name` the name of `obj`; "" for a document
    whose keys name themselves): encoding it some other way would give the same value another id.
    """
    _check_exact(obj, name)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _check_exact(obj: Any, where: str) -> None:
    if type(obj) in (str, int, float, bool, type(None)):
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_exact(v, f"{where}[{i}]")
    elif type(obj) is dict:
        for k, v in obj.items():
            if type(k) is not str:
                raise TypeError(f"canonical JSON: {where or 'the value'} has the key {k!r} of type "
                                f"{type(k).__name__}; keys must be str")
            _check_exact(v, f"{where}.{k}" if where else k)
    else:
        kind = f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")
        raise TypeError(f"canonical JSON: {where or 'the value'} is a {kind} ({obj!r}), which JSON does not encode "
                        "exactly: convert it with int(), float() or str() where it is made")


def artifact_id(kind: str, params: Mapping, inputs: Mapping[str, str], code: str) -> str:
    """id = sha256(canonical_json({kind, params, inputs, code}))."""
    doc = {"kind": kind, "params": dict(params), "inputs": dict(inputs), "code": code}
    return hashlib.sha256(canonical_json(doc, name="").encode()).hexdigest()


# Modules that cannot change an artifact's content; a fingerprint neither hashes nor follows them:
#   sstm           the package root: only __version__ (recorded in the provenance, not the id);
#   sstm.errors    the user-error exception: a stage that raises it registers nothing;
#   sstm.ui        console messages, progress bars and signal handling;
#   sstm.registry  ids, hashing and storage (the package and every module in it): it places the files a
#                  build wrote, never changes them;
#   sstm.provenance facts recorded beside the id (git state, versions, host).
FINGERPRINT_EXCLUDED = ("sstm", "sstm.errors", "sstm.ui", "sstm.registry", "sstm.provenance")
EXCLUDED_PACKAGES = ("sstm.registry",)  # their submodules are excluded too


def excluded(name: str) -> bool:
    """Whether the module `name` is left out of fingerprints (:data:`FINGERPRINT_EXCLUDED`)."""
    return name in FINGERPRINT_EXCLUDED or name.startswith(tuple(f"{p}." for p in EXCLUDED_PACKAGES))


@lru_cache(maxsize=None)
def code_fingerprint(module: str, root: Path = PACKAGE_DIR) -> str:
    """The ``code`` of an artifact id: what the stage `module` runs, found from its import graph.

    The closure of `module` under imports (``ast``: top-level and function-level, absolute and
    relative, ``import a.b`` and ``from a import b``; importing ``sstm.a.b`` also runs the packages
    ``sstm.a``), less :data:`FINGERPRINT_EXCLUDED`, is hashed as (path relative to the package,
    contents) per file, so it follows modules by name wherever they move. Returns
    ``"<16 hex> torch-2.13 transformers-5.24 peft-0.21"``: the hash, then the major.minor version of
    every :data:`~sstm.provenance.NUMERIC_LIBRARIES` library the closure imports. `root` is the
    directory of the ``sstm`` package (tests fingerprint a copy of it).
    """
    root = Path(root)
    modules, libraries = import_closure(module, root)
    h = hashlib.sha256()
    for path in sorted(_module_file(name, root) for name in modules):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    versions = [f"{lib}-{major_minor(lib)}" for lib in NUMERIC_LIBRARIES if lib in libraries]
    return " ".join([h.hexdigest()[:16], *versions])


def import_closure(module: str, root: Path = PACKAGE_DIR) -> tuple[set[str], set[str]]:
    """(the ``sstm`` modules `module` runs, less the excluded ones; the other top-level packages they import)."""
    if _module_file(module, root) is None:
        raise ValueError(f"code fingerprint: no module {module} under {root}")
    todo, seen, libraries = [module], set(), set()
    while todo:
        name = todo.pop()
        if name in seen or excluded(name):
            continue
        seen.add(name)
        internal, external = _imports(name, _module_file(name, root), root.name)
        libraries |= external
        for imported in internal:  # every package on the way runs too: sstm.a.b -> sstm.a, sstm.a.b
            parts = imported.split(".")
            todo += [p for i in range(1, len(parts) + 1)
                     if _module_file(p := ".".join(parts[:i]), root) is not None]
    return seen, libraries


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of module `name` (``sstm.a.b``) in the package at `root`, None if it is not one."""
    base = root.joinpath(*name.split(".")[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if name.split(".")[0] == root.name and path.is_file():
            return path
    return None


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:`` (imports for annotations only)."""
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, package: str) -> tuple[set[str], set[str]]:
    """(dotted names `name` imports from `package`, which may be modules or their attributes;
    top-level names of the other packages it imports)."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()
    tree = ast.parse(path.read_bytes(), filename=str(path))
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                   for stmt in block.body for n in ast.walk(stmt)}  # never run: not a dependency
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            parent = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                parent = ".".join(anchor + ([node.module] if node.module else []))
            names = [parent, *(f"{parent}.{a.name}" for a in node.names if a.name != "*")]
        else:
            continue
        for n in names:
            if n.split(".")[0] == package:
                internal.add(n)
            else:
                external.add(n.split(".")[0])
    return internal, external
