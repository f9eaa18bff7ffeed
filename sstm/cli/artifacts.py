"""`sstm ls | show | diff | verify | gc`: the registry's artifacts."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table
from rich.tree import Tree

from sstm.errors import SSTMError
from sstm.registry import KINDS, Registry, describe_damage
from sstm.ui import console


from sstm.cli.core import _summary, command, out, registry

# --------------------------------------------------------------------------- registry commands



def _params_brief(params: dict, width: int = 60) -> str:
    text = ", ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, (dict, list)))
    return text if len(text) <= width else text[: width - 1] + "…"


@command(rich_help_panel="Registry")
def ls(
    kind: Optional[str] = typer.Option(None, "--kind", help=f"Only this kind: {', '.join(KINDS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List registered artifacts."""
    if kind is not None and kind not in KINDS:
        raise SSTMError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    arts = registry(writes=False).list(kind)
    if as_json:
        out.print_json(data=[_summary(a) for a in arts])
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


@command(rich_help_panel="Registry")
def show(
    ref: str = typer.Argument(..., metavar="ID", help="Artifact id or unique prefix."),
    as_json: bool = typer.Option(False, "--json", help="Print the full record as JSON."),
) -> None:
    """Show one artifact: parameters, files, provenance, metrics and its lineage tree."""
    reg = registry(writes=False)
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
    if damage := reg.damage(a):
        out.print(f"[red]damaged[/red]   {describe_damage(damage)} (`sstm verify`; the command that built it "
                  "builds it again in place)")
    root = Tree("lineage")
    _tree(reg, reg.lineage(a), root)
    out.print(root)


@command(rich_help_panel="Registry")
def diff(
    a: str = typer.Argument(..., metavar="ID_A"),
    b: str = typer.Argument(..., metavar="ID_B"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every differing parameter, input, code fingerprint and metric between two artifacts (recursively)."""
    reg = registry(writes=False)
    rows = reg.diff(reg.get(a), reg.get(b))
    if as_json:
        out.print_json(data=[{"field": f, "a": x, "b": y} for f, x, y in rows])
        return
    if not rows:
        out.print("identical")
        return
    table = Table("field", "A", "B")
    for f, x, y in rows:
        table.add_row(f, json.dumps(x, default=str), json.dumps(y, default=str))
    out.print(table)


@command(rich_help_panel="Registry")
def verify(
    rebuild: Optional[str] = typer.Option(None, "--rebuild", metavar="ID", help="Build this artifact again from its "
                                          "recorded inputs and params in a temporary directory and compare it with "
                                          "the stored files (README: Reproducibility)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-hash every artifact file; report missing or corrupt files (exit 1 if any). --rebuild: rebuild one and compare."""
    if rebuild is not None:
        _verify_rebuild(rebuild, as_json)
        return
    reg = registry(writes=False)
    problems = reg.verify()
    if as_json:
        out.print_json(data=[{"id": a.id, "kind": a.kind, "file": f, "problem": p} for a, f, p in problems])
    else:
        for a, f, p in problems:
            out.print(f"[red]{p}[/red] {a.kind} {a.short} {f}")
        if not problems:
            out.print(f"ok: {len(reg.list())} artifacts verified")
    if problems:
        raise typer.Exit(1)


def _verify_rebuild(ref: str, as_json: bool) -> None:
    from sstm.rebuild import verify_rebuild

    report = verify_rebuild(registry(), ref)
    if as_json:
        out.print_json(data=report.to_json())
    elif report.status == "reproduced":
        out.print(f"reproduced: {report.kind} {report.id[:12]} ({report.files} files; max relative error "
                  f"{report.max_error:.2g}, tolerance {report.rtol:g})")
    elif report.status == "differs":
        table = Table("file", "item", "relative error", "detail",
                      title=f"{report.kind} {report.id[:12]} differs from its rebuild (tolerance {report.rtol:g})")
        for d in report.differences:
            table.add_row(d.file, d.item, "" if d.error is None else f"{d.error:.3g}", d.detail)
        out.print(table)
    else:
        out.print(f"{report.kind} {report.id[:12]}: {report.message}")
    if not report.reproduced:
        raise typer.Exit(1)


@command(rich_help_panel="Registry")
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed.")) -> None:
    """Remove temp leftovers of interrupted builds and the artifact directories they left unregistered
    (never a directory registry.db has no record of: those are listed and kept)."""
    reg = registry()
    paths = reg.gc(dry_run=dry_run)
    for p in paths:
        out.print(f"{'would remove' if dry_run else 'removed'} {p}")
    if not paths:
        out.print("nothing to remove")
    if unknown := reg.unknown():
        console.print(f"kept {len(unknown)} artifact directories registry.db has no record of (e.g. "
                      f"{unknown[0].parent.name}/{unknown[0].name[:12]}): it may have been replaced or restored from "
                      "an older copy; restore the newer registry.db, or move them aside")
