"""The `sstm` command line: a thin Typer layer that parses, calls a stage, prints.

User errors (`SSTMError`) print one line and exit 2; Ctrl-C exits 130 and, thanks
to the registry's atomic builds, leaves nothing half-written registered.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from sstm import __version__
from sstm.errors import SSTMError
from sstm.registry import KINDS, Artifact, Registry
from sstm.ui import console

app = typer.Typer(
    help="Safety-aware merging of LoRA adapters (SST-Merge), with every artifact content-addressed "
    "in a SQLite registry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = console.__class__(highlight=False, soft_wrap=True)  # stdout, for results
_state: dict = {"home": None}


def command(target: typer.Typer = app, name: str | None = None, **kw):
    """Register a command whose user errors print one line and exit 2 (never a traceback)."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except SSTMError as e:
                console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                console.print("interrupted: nothing half-written was registered")
                raise typer.Exit(130) from None

        return target.command(name=name, **kw)(wrapper)

    return deco


def registry() -> Registry:
    return Registry(_state["home"])


def _version(value: bool) -> None:
    if value:
        out.print(f"sstm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    home: Optional[Path] = typer.Option(
        None, "--home", help="Directory holding registry.db and artifacts/ (default: $SSTM_HOME or the current directory)."
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["home"] = home


# --------------------------------------------------------------------------- registry commands


def _summary(a: Artifact) -> dict:
    return {
        "id": a.id,
        "kind": a.kind,
        "label": a.label,
        "created": a.created.isoformat(timespec="seconds"),
        "params": a.params,
        "inputs": a.inputs,
        "code": a.code,
        "metrics": a.metrics,
        "path": str(a.path),
    }


def _params_brief(params: dict, width: int = 60) -> str:
    text = ", ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, (dict, list)))
    return text if len(text) <= width else text[: width - 1] + "…"


@command()
def ls(
    kind: Optional[str] = typer.Option(None, "--kind", help=f"Only this kind: {', '.join(KINDS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List registered artifacts."""
    if kind is not None and kind not in KINDS:
        raise SSTMError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    arts = registry().list(kind)
    if as_json:
        out.print_json(data=[_summary(a) for a in arts]) if arts else out.print("[]")
        return
    table = Table("id", "kind", "label", "params", "created")
    for a in arts:
        table.add_row(a.short, a.kind, a.label, _params_brief(a.params), a.created.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


def _tree(reg: Registry, node: dict, tree: Tree, role: str | None = None) -> None:
    a = node["artifact"]
    head = f"[bold]{a.kind}[/bold] {a.short} {a.label}".rstrip()
    branch = tree.add(f"{role}: {head}" if role else head)
    for r, child in node["inputs"].items():
        _tree(reg, child, branch, r)


@command()
def show(
    ref: str = typer.Argument(..., metavar="ID", help="Artifact id or unique prefix."),
    as_json: bool = typer.Option(False, "--json", help="Print the full record as JSON."),
) -> None:
    """Show one artifact: parameters, files, provenance, metrics and its lineage tree."""
    reg = registry()
    a = reg.get(ref)
    if as_json:
        out.print_json(data=_summary(a) | {"provenance": a.provenance, "files": a.files})
        return
    out.print(f"[bold]{a.kind}[/bold] {a.id}  {a.label}")
    out.print(f"path      {a.path}")
    out.print(f"created   {a.created.isoformat(timespec='seconds')}   code {a.code}")
    out.print("params    " + json.dumps(a.params, sort_keys=True))
    p = a.provenance
    out.print(
        f"provenance sstm {p.get('sstm_version')} git {str(p.get('git_commit'))[:10]}"
        f"{' (dirty)' if p.get('git_dirty') else ''} torch {p.get('torch')} transformers {p.get('transformers')} "
        f"peft {p.get('peft')} host {p.get('host')} wall {p.get('wall_time_s')}s"
    )
    if a.metrics:
        out.print("metrics   " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(a.metrics.items())))
    out.print("files     " + ", ".join(f"{k} ({v['size']} B)" for k, v in a.files.items()))
    root = Tree("lineage")
    _tree(reg, reg.lineage(a), root)
    out.print(root)


@command()
def diff(
    a: str = typer.Argument(..., metavar="ID_A"),
    b: str = typer.Argument(..., metavar="ID_B"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every differing parameter, input, code fingerprint and metric between two artifacts (recursively)."""
    reg = registry()
    rows = reg.diff(reg.get(a), reg.get(b))
    if as_json:
        out.print_json(data=[{"field": f, "a": x, "b": y} for f, x, y in rows]) if rows else out.print("[]")
        return
    if not rows:
        out.print("identical")
        return
    table = Table("field", "A", "B")
    for f, x, y in rows:
        table.add_row(f, json.dumps(x, default=str), json.dumps(y, default=str))
    out.print(table)


@command()
def verify(as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-hash every artifact file; report missing or corrupt files (exit 1 if any)."""
    reg = registry()
    problems = reg.verify()
    if as_json:
        out.print_json(data=[{"id": a.id, "kind": a.kind, "file": f, "problem": p} for a, f, p in problems]) if problems else out.print("[]")
    else:
        for a, f, p in problems:
            out.print(f"[red]{p}[/red] {a.kind} {a.short} {f}")
        if not problems:
            out.print(f"ok: {len(reg.list())} artifacts verified")
    if problems:
        raise typer.Exit(1)


@command()
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed.")) -> None:
    """Remove temp leftovers of interrupted builds and artifact directories with no registry row."""
    paths = registry().gc(dry_run=dry_run)
    for p in paths:
        out.print(f"{'would remove' if dry_run else 'removed'} {p}")
    if not paths:
        out.print("nothing to remove")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
