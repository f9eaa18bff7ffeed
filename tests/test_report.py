"""`sstm report`: one self-contained page with the comparison, the plot, SST diagnostics and responses."""

import base64
import html
import json
import math
import re
from html.parser import HTMLParser
from statistics import median

import pytest
from test_compare import METRIC_NAME, _art
from typer.testing import CliRunner

from cli_checks import assert_user_error
from sstm.cli import app
from sstm.data import register_rows
from sstm.report import ReportConfig, report

runner = CliRunner()
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"
JUDGE = {"judge": "opening-v1", "judge_sha256": "cd" * 32}


def modules_doc() -> dict:
    """A diagnostics.json as sstm.merge.sst writes it: two layers × two module types and lm_head."""
    mods = {}
    for layer in (0, 1):
        for j, t in enumerate(("q_proj", "down_proj")):
            x = 1 + layer + 2 * j
            mods[f"model.layers.{layer}.{'self_attn' if t == 'q_proj' else 'mlp'}.{t}"] = {
                "layer_weight": 2.0 if t == "q_proj" else 1.5, "k_effective": 3 + layer, "lambda_max": 100.0 * x,
                "lambda_k": 10.0 * x, "lambda_next": 5.0 * x, "lambda_topk_share": 0.9 + 0.01 * x,
                "norm_kept": 0.5 * x, "safety_fisher_kept": 0.8 + 0.01 * x, "utility_fisher_kept": 1e-4 * x}
    mods["lm_head"] = dict(mods["model.layers.0.self_attn.q_proj"], layer_weight=5.0, norm_kept=0.25)
    return {"method": "sst", "k": 4, "w": 1.0, "damping": 1e-3, "k_effective": {"min": 3, "max": 4, "median": 3.5,
            "capped_modules": 2}, "modules": mods}


def document(i: int) -> str:
    """Row i's document in the RepliQA dataset of `world` (one with markup in it)."""
    return f"Document number {i}: the Nordvik ferry company was founded in {1980 + i}." + (HOSTILE if i == 3 else "")


def fab_eval(reg, model, base, data, suite, scores, responses):
    """An eval record whose samples carry the given responses and (judged suites) the refusal verdicts."""
    judged = suite != "repliqa"
    rows = [{"id": i, "prompt": f"prompt {i} of {suite}", "response": resp, "reference": f"ref {i}",
             "score": float(s), "refused": bool(s) if judged else None} for i, (s, resp) in enumerate(zip(scores, responses))]
    files = {"metrics.json": json.dumps({"suite": suite, "status": "ok", "n": len(rows)}),
             "samples.jsonl": "".join(json.dumps(r) + "\n" for r in rows)}
    params = {"suite": suite, "samples": len(rows)} | (JUDGE if judged else {})
    return _art(reg, "eval", params, {"model": model, "base": base, "data": data}, "evalcode", files,
                {METRIC_NAME[suite]: sum(scores) / len(scores)})


@pytest.fixture
def world(reg):
    base = _art(reg, "base", {"source": "dir", "sha256": "b" * 64}, {}, "basecode", label="tiny")
    util = _art(reg, "adapter", {"role": "utility", "rank": 4}, {"base": base}, "traincode")
    safe = _art(reg, "adapter", {"role": "safety", "rank": 4}, {"base": base}, "traincode")
    pair = {"base": base, "utility": util, "safety": safe}
    sst = _art(reg, "merged", {"method": "sst", "k": 4, "w": 1.0, "samples": 8}, pair, "mergecode",
               {"diagnostics.json": json.dumps(modules_doc())})
    ta = _art(reg, "merged", {"method": "ta", "w": 1.0}, pair, "mergecode")
    n = 10
    data = {"jailbreak": register_rows(reg, "jailbreak-eval", [{"prompt": "jailbreak", "response": "r"}],
                                       {"kind": "test"}, quiet=True),
            "repliqa": register_rows(reg, "repliqa-eval", [{"prompt": f"question {i}", "context": document(i),
                                                             "response": "r"} for i in range(n)],
                                     {"kind": "test"}, quiet=True)}
    truth = [(base, 0.2, 0.3), (util, 0.1, 0.6), (safe, 0.9, 0.2), (sst, 0.7, 0.5), (ta, 0.5, 0.45)]
    for m, refusal, rl in truth:
        k = round(refusal * n)
        answers = [HOSTILE if m is ta and i == 0 else f"answer {i} by {m.short}" for i in range(n)]
        fab_eval(reg, m, base, data["jailbreak"], "jailbreak", [1.0] * k + [0.0] * (n - k), answers)
        fab_eval(reg, m, base, data["repliqa"], "repliqa", [rl] * n, answers)
    return {"reg": reg, "sst": sst, "ta": ta, "models": [m for m, _, _ in truth], "n": n}


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a["src"])
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])


def test_the_page_has_every_section(world, tmp_path):
    out = report(world["reg"], tmp_path / "r.html", ReportConfig(prompts=3))
    page = out.read_text()
    tags = Tags()
    tags.feed(page)
    assert tags.ids == ["comparison", "tradeoff", "diagnostics", "responses"]
    # self-contained: every image inline, no file or URL fetched
    assert len(tags.images) == 2 and all(src.startswith("data:image/png;base64,") for src in tags.images)
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for src in tags.images)
    assert all(link.startswith(("#", "data:")) for link in tags.links)
    # the comparison: every model, the sst row's refusal rate with its Wilson interval
    for m in world["models"]:
        assert m.id[:8] in page
    n, p, z = world["n"], 0.7, 1.959963984540054  # the Wilson interval, by its formula
    mid, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = mid - half, mid + half
    assert f"70.0<span class=\"ci\">{100 * lo:.1f}–{100 * hi:.1f}</span>" in page
    assert "matched safety" in page and "power:" in page  # sstm compare's footer
    # the diagnostics table: medians by module type, computed here from the document
    mods = modules_doc()["modules"]
    q = median(d["norm_kept"] for m, d in mods.items() if m.endswith("q_proj"))
    assert re.search(rf"<td>q_proj</td><td>2</td><td>2.0</td><td>3–4</td>\s*<td>{q:.3g}</td>", page)
    assert "<code>lm_head</code> size kept 0.25" in page
    # responses: escaped, with the verdicts
    assert HOSTILE not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert page.count('class="prompt"') == 6 and "refused" in page and "answered" in page


def test_report_cli(world, tmp_path, home):
    result = runner.invoke(app, ["report", str(tmp_path / "r.html"), "--where", "method=sst", "--prompts", "0"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    assert world["sst"].id[:8] in page and world["ta"].id[:8] not in page and 'id="responses"' not in page
    assert_user_error(runner.invoke(app, ["report", str(tmp_path / "r.txt")]), "HTML")
    assert_user_error(runner.invoke(app, ["report", str(tmp_path / "r.html"), "--where", "method=none"]),
                      "no evaluations")


def test_repliqa_prompts_show_their_documents_and_the_header_no_local_path(world, tmp_path):
    page = report(world["reg"], tmp_path / "r.html", ReportConfig(prompts=10)).read_text()
    responses = page[page.index('id="responses"'):]
    repliqa = responses[responses.index("<h3>repliqa"):]
    shown = re.findall(r'<div class="prompt">prompt (\d+) of repliqa</div>', repliqa)
    assert len(shown) == world["n"]
    # each question right after its own document (the sample's id is the row's index in the eval's dataset)
    docs = re.findall(r'<details class="document"><summary>document \((\d+) characters\)[^<]*</summary>'
                      r'<div class="text">([^<]*)</div></details>\s*<div class="prompt">prompt (\d+) of repliqa',
                      repliqa)
    assert len(docs) == world["n"]
    for length, text, i in docs:
        assert int(length) == len(document(int(i))) and html.unescape(text) == document(int(i))
    assert HOSTILE not in page  # the document with markup is escaped too
    assert '<details class="document">' not in responses[:responses.index("<h3>repliqa")]  # jailbreak: no document
    header = page[page.index("<header>"):page.index("</header>")]
    assert str(world["reg"].home) not in page and str(tmp_path) not in page and "Registry" not in header
