"""Options shared by several commands (sstm.cli.core's Annotated aliases) read the same in each of them."""

from __future__ import annotations

import typer.main
import typer.testing

from sstm.cli import app

# flag -> the commands that take it from sstm.cli.core (one declaration each)
SHARED = {
    "--judge": (("run",), ("search",), ("calibrate", "sst"), ("calibrate", "ta")),
    "--max-new-tokens": (("search",), ("calibrate", "sst"), ("calibrate", "dare")),
    "--max-context-tokens": (("search",), ("calibrate", "sst"), ("calibrate", "ties")),
    "--plot": (("run",), ("compare",)),
}


def _option(root, path: tuple[str, ...], flag: str):
    cmd = root
    for name in path:
        cmd = cmd.commands[name]
    (opt,) = [p for p in cmd.params if flag in p.opts]
    return opt


def test_shared_options_have_one_help_across_commands():
    root = typer.main.get_command(app)
    for flag, paths in SHARED.items():
        opts = [_option(root, path, flag) for path in paths]
        helps = {o.help for o in opts}
        assert len(helps) == 1 and None not in helps and "" not in helps, (flag, helps)
        assert {(o.default, o.required, o.type_descriptor.annotation) for o in opts} == {
            (None, False, opts[0].type_descriptor.annotation)}, flag


def test_shared_options_reach_the_stage_configs(monkeypatch):
    """`sstm calibrate sst --judge/--max-new-tokens/--max-context-tokens` still land in its eval config."""
    import sstm.calibrate

    seen = {}

    def fake(reg, ccfg):
        seen["eval"] = ccfg.eval
        return []

    monkeypatch.setattr(sstm.calibrate, "calibrate", fake)
    res = typer.testing.CliRunner().invoke(app, ["calibrate", "sst", "--utility", "u", "--safety", "s", "--k", "4",
                                                 "--judge", "gcg", "--max-new-tokens", "7",
                                                 "--max-context-tokens", "300"])
    assert res.exit_code == 0, res.output
    ev = seen["eval"]
    assert (ev.judge, ev.max_new_tokens, ev.max_context_tokens) == ("gcg", 7, 300)
