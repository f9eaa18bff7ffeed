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
