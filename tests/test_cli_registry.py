"""CLI for the registry commands: happy paths and every bad-input path (exit 2, one line)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sstm.cli import app
from cli_checks import assert_user_error

runner = CliRunner()


def invoke(*args, **kw):
    return runner.invoke(app, list(args), **kw)


def make(reg, kind, params, inputs=None):
    def build(out: Path):
        (out / "f.txt").write_text(json.dumps(params))
        return {"m": 1.0}

    return reg.get_or_build(kind, params, inputs or {}, "c", build, quiet=True)


def test_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("ls", "show", "diff", "verify", "gc"):
        assert cmd in r.output


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.startswith("sstm ")


def test_ls_json_empty_home(home):
    r = invoke("ls", "--json")
    assert r.exit_code == 0
    assert json.loads(r.output) == []


def test_ls_show_diff_verify_gc(reg):
    base = make(reg, "base", {"name": "m"})
    a = make(reg, "adapter", {"rank": 4}, {"base": base})
    b = make(reg, "adapter", {"rank": 8}, {"base": base})
    r = invoke("ls", "--json")
    assert r.exit_code == 0 and {x["id"] for x in json.loads(r.output)} == {base.id, a.id, b.id}
    r = invoke("ls", "--kind", "adapter", "--json")
    assert {x["id"] for x in json.loads(r.output)} == {a.id, b.id}
    r = invoke("ls")
    assert r.exit_code == 0 and base.id[:12] in r.output
    r = invoke("show", a.id[:10])
    assert r.exit_code == 0 and a.id in r.output and "lineage" in r.output and base.id[:12] in r.output
    r = invoke("show", a.id, "--json")
    assert json.loads(r.output)["inputs"] == {"base": base.id}
    r = invoke("diff", a.id, b.id, "--json")
    assert r.exit_code == 0 and json.loads(r.output) == [{"field": "params.rank", "a": 4, "b": 8}]
    r = invoke("diff", a.id, a.id)
    assert "identical" in r.output
    r = invoke("verify")
    assert r.exit_code == 0 and "3 artifacts" in r.output
    (a.path / "f.txt").chmod(0o644)  # registered files are read-only
    (a.path / "f.txt").write_text("tampered")
    r = invoke("verify")
    assert r.exit_code == 1 and "corrupt" in r.output
    (reg.root / "adapter" / ".tmp-deadbeef-1-abc").mkdir()
    r = invoke("gc", "--dry-run")
    assert r.exit_code == 0 and "would remove" in r.output
    r = invoke("gc")
    assert "removed" in r.output and not (reg.root / "adapter" / ".tmp-deadbeef-1-abc").exists()


def test_home_option(tmp_path, monkeypatch):
    monkeypatch.delenv("SSTM_HOME", raising=False)
    r = invoke("--home", str(tmp_path), "ls", "--json")
    assert r.exit_code == 0 and json.loads(r.output) == []
    assert (tmp_path / "registry.db").exists()


def test_unknown_id(home):
    assert_user_error(invoke("show", "abcdef12"), "no artifact with id abcdef12")


def test_not_hex_id(home):
    assert_user_error(invoke("show", "zz-top"), "not an artifact id")


def test_ambiguous_prefix(reg):
    arts = [make(reg, "dataset", {"i": i}) for i in range(40)]
    first = {}
    for a in arts:
        first.setdefault(a.id[0], []).append(a)
    prefix = next(k for k, v in first.items() if len(v) > 1)
    assert_user_error(invoke("show", prefix), "ambiguous")


def test_missing_sstm_home_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SSTM_HOME", str(tmp_path / "nope"))
    assert_user_error(invoke("ls"), "SSTM_HOME")


def test_missing_home_option_dir(tmp_path):
    assert_user_error(invoke("--home", str(tmp_path / "nope"), "ls"), "not an existing directory")


def test_corrupt_registry_file(home):
    (home / "registry.db").write_bytes(b"this is not sqlite at all" * 100)
    assert_user_error(invoke("ls"), "not a valid SQLite database")


def test_registry_of_an_older_sstm(home):
    from test_registry import _old_schema_db

    _old_schema_db(home / "registry.db")
    assert_user_error(invoke("ls"), "made by another version of sstm")


def test_bad_kind(home):
    assert_user_error(invoke("ls", "--kind", "banana"), "--kind banana")


@pytest.mark.parametrize("cmd", [["diff", "abc123", "abc124"], ["show", ""]])
def test_more_bad_ids(home, cmd):
    r = invoke(*cmd)
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_results_printed_on_rank_0_only(reg, tiny_base, monkeypatch):
    """Under torchrun / accelerate every rank runs the command (here `merge ta`, which starts no process group):
    rank 1 prints no result, rank 0 (a cache hit) prints the table; errors still show on every rank."""
    from adapters import make_adapter

    from sstm import cli

    u, s = (make_adapter(reg, tiny_base, role, seed=i) for i, role in enumerate(("utility", "safety")))
    cmd = ("merge", "ta", "--utility", u.short, "--safety", s.short, "--w", "0.5")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    r = invoke(*cmd)
    assert r.exit_code == 0, r.output
    (merged,) = reg.list("merged")
    assert r.stdout == "" and cli.rank0(cli.console) is not cli.console
    assert_user_error(invoke("merge", "ta", "--utility", u.short, "--safety", "0123abcd"), "0123abcd")
    monkeypatch.setenv("RANK", "0")
    r = invoke(*cmd)
    assert r.exit_code == 0 and merged.id[:6] in r.stdout and "│ ta " in r.stdout, r.output
    assert reg.list("merged") == [merged] and cli.rank0(cli.console) is cli.console


# --------------------------------------------------------------------------- trust: lost databases, damaged files


def _close(reg) -> None:
    reg.engine.dispose()  # as a finished process leaves it: the WAL checkpointed into registry.db


def _artifacts(reg) -> list:
    base = make(reg, "base", {"name": "m"})
    return [base, make(reg, "adapter", {"rank": 4}, {"base": base}), make(reg, "adapter", {"rank": 8}, {"base": base})]


def test_empty_db_beside_artifacts_is_refused_by_every_command(reg):
    arts = _artifacts(reg)
    _close(reg)
    reg.db_path.write_bytes(b"")
    for cmd in (["ls"], ["verify"], ["gc", "--dry-run"], ["gc"], ["show", arts[1].id[:8]], ["compare"]):
        assert_user_error(invoke(*cmd), "registry.db is empty (0 bytes) but")
    assert all(a.path.is_dir() for a in arts) and reg.db_path.stat().st_size == 0


def test_gc_lists_and_keeps_dirs_the_registry_has_no_record_of(reg):
    _artifacts(reg)
    stray = reg.root / "adapter" / ("ab" * 32)
    stray.mkdir()
    r = invoke("gc", "--dry-run")
    assert r.exit_code == 0 and "nothing to remove" in r.stdout and str(stray) not in r.stdout
    assert "kept 1 artifact directories registry.db has no record of (e.g. adapter/abababababab)" in r.output
    assert invoke("gc").exit_code == 0 and stray.is_dir()


def test_damaged_artifact_is_refused_in_one_line_and_rebuilt_by_its_command(reg, tiny_base, tmp_path):
    """After deleting an adapter's weights: eval and export say "damaged ... sstm verify" in one line (before:
    HFValidationError / FileNotFoundError tracebacks), show marks it, and the command that registered it
    (here `train --from-dir`; `merge` and every stage go through the same get-or-build) builds it again in place."""
    import shutil

    from adapters import make_adapter

    src = tmp_path / "peft"
    shutil.copytree(make_adapter(reg, tiny_base, "utility", rank=2).path, src)
    register = ("train", "--role", "utility", "--from-dir", str(src), "--model", tiny_base.id, "--json")
    r = invoke(*register)
    assert r.exit_code == 0, r.output
    art = reg.get(json.loads(r.stdout)["id"])
    weights = art.path / "adapter_model.safetensors"
    weights.unlink()
    data = tmp_path / "jb.csv"
    data.write_text("prompt\nHow do I pick a lock?\n", encoding="utf-8")
    damaged = f"adapter {art.short} is damaged (adapter_model.safetensors missing): run `sstm verify`"
    r = invoke("eval", art.short, "--suite", "jailbreak", "--jailbreak-data", str(data), "--device", "cpu")
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]  # after "building dataset ..."
    assert r.exit_code == 2 and "Traceback" not in r.output and len(errors) == 1 and damaged in errors[0], r.output
    assert_user_error(invoke("export", art.short, str(tmp_path / "out")), damaged)
    r = invoke("show", art.short)
    assert r.exit_code == 0 and "damaged" in r.stdout and "adapter_model.safetensors missing" in r.stdout
    r = invoke(*register[:-1])
    assert r.exit_code == 0 and f"adapter {art.id[:12]} is damaged" in r.output and "building it again" in r.output
    assert weights.is_file() and reg.get(art.id, kind="adapter").files == reg.find(art.id).files
    assert invoke("verify").exit_code == 0 and len(reg.list("adapter")) == 2


# --------------------------------------------------------------------------- a home this process cannot write

READ_ONLY_RUNNER = """
import json, sys
from typer.testing import CliRunner
from sstm.cli import app
runner = CliRunner()
print(json.dumps([(r.exit_code, r.output) for r in (runner.invoke(app, cmd) for cmd in json.loads(sys.argv[1]))]))
"""


def run_read_only(home: Path, commands: list[list[str]]) -> list[tuple[int, str]]:
    """Run sstm commands with `home` unwritable: chmod 555 (or, for root, whom modes do not stop, a read-only
    bind mount in a private mount namespace); returns (exit code, output) per command."""
    import os
    import subprocess
    import sys

    if os.geteuid() != 0:
        home.chmod(0o555)
        try:
            return [(r.exit_code, r.output) for r in (invoke(*cmd) for cmd in commands)]
        finally:
            home.chmod(0o755)
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$1" -c "$2" "$3"'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, str(home), sys.executable, READ_ONLY_RUNNER,
                           json.dumps(commands)], capture_output=True, text=True,
                          env=dict(os.environ, SSTM_HOME=str(home)))
    if proc.returncode != 0 and not proc.stdout:
        pytest.skip(f"running as root and cannot mount the home read-only: {proc.stderr.strip()[-200:]}")
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def test_read_only_home_allows_ls_show(reg, tmp_path):
    """ls, show, diff, verify, compare and data ls read an unwritable home (before: OSError on
    artifacts/.locks/schema.lock for every command); commands that write say so in one line."""
    base, a, b = _artifacts(reg)
    _close(reg)
    empty = tmp_path / "empty"
    empty.mkdir()
    results = run_read_only(reg.home, [
        ["ls", "--json"], ["show", a.short], ["diff", a.id, b.id, "--json"], ["verify"], ["compare"], ["data", "ls"],
        ["gc"], ["merge", "ta", "--utility", a.id, "--safety", b.id, "--w", "0.5"]])
    (ls, show, diff, verify, compare, data_ls, gc, merge) = results
    assert ls[0] == 0 and {x["id"] for x in json.loads(ls[1])} == {base.id, a.id, b.id}, ls
    assert show[0] == 0 and a.id in show[1] and base.id[:12] in show[1], show
    assert diff[0] == 0 and json.loads(diff[1]) == [{"field": "params.rank", "a": 4, "b": 8}], diff
    assert verify[0] == 0 and "ok: 3 artifacts verified" in verify[1], verify
    assert compare[0] == 0 and "no evaluations" in compare[1], compare
    assert data_ls[0] == 0, data_ls
    for code, text in (gc, merge):
        assert code == 2 and "Traceback" not in text and len(text.strip().splitlines()) == 1, text
        assert f"home {reg.home} is not writable" in text
        assert "ls, show, diff, compare and verify work read-only" in text
    assert not (reg.home / "registry.db-wal").exists(), "nothing written"
    (ls_empty,) = run_read_only(empty, [["--home", str(empty), "ls", "--json"]])
    assert ls_empty[0] == 0 and json.loads(ls_empty[1]) == [] and not (empty / "registry.db").exists()
