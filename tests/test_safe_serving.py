"""Serving safely: path confinement (interp.safe_paths), the dashboard's limits (interp.report.serving), the
host check of `interp dashboard`, Markdown and script-JSON escaping of hostile text, terminal control bytes."""

from __future__ import annotations

import html
import json
import os
import re
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from interp import cli
from interp.errors import InterpError
from interp.safe_paths import confine, real_roots

HOSTILE = "```\n<img src=x onerror=alert(1)>\n<script>alert(2)</script>\n````` `<!--<script>"


def _refusal(text: str, roots, **kw) -> str:
    with pytest.raises(InterpError) as e:
        confine(text, roots, "corpus path", **kw)
    return str(e.value).replace(repr(text), "PATH")


@pytest.fixture
def tree(tmp_path):
    """data/ (the allowed root: a file, a folder, a link inside) beside secret.txt outside it."""
    data = tmp_path / "data"
    (data / "docs").mkdir(parents=True)
    (data / "a.txt").write_text("hello")
    (data / "docs" / "b.txt").write_text("world!")
    (data / "inner").symlink_to(data / "a.txt")
    (tmp_path / "secret.txt").write_text("TOKEN=hunter2")
    return data, real_roots(data)


def test_confine_lets_through_files_and_folders_inside_the_root(tree):
    data, roots = tree
    assert confine(str(data / "a.txt"), roots, "p").path == Path(os.path.realpath(data / "a.txt"))
    rel = confine("docs/b.txt", roots, "p")  # relative: looked up in the root
    assert rel.path == Path(os.path.realpath(data / "docs" / "b.txt")) and rel.n_bytes == 6 and not rel.is_dir
    folder = confine(str(data), roots, "p", want="dir")
    assert folder.is_dir and folder.n_files == 3 and folder.n_bytes == 5 + 6 + 5  # the link counts its target
    assert confine("inner", roots, "p").path == Path(os.path.realpath(data / "a.txt"))


def test_every_refusal_reads_the_same(tree, tmp_path):
    """Outside the root, through .. or a link, a FIFO, a device, missing: one message, nothing opened."""
    data, roots = tree
    (data / "out").symlink_to(tmp_path / "secret.txt")
    (data / "etc").symlink_to("/etc")
    os.mkfifo(data / "fifo")
    missing = _refusal(str(data / "nowhere.txt"), roots)
    assert "PATH is not a file or folder this dashboard may read" in missing
    start = time.monotonic()
    for text in ("/etc/passwd", "/proc/self/environ", "/dev/zero", str(tmp_path / "secret.txt"),
                 str(data / ".." / "secret.txt"), "../secret.txt", "../../../../etc/passwd", "out", "etc/passwd",
                 str(data / "fifo"), "fifo", "~/.ssh/id_rsa", "a.txt\0", ""):
        if text:
            assert _refusal(text, roots) == missing, text
    assert time.monotonic() - start < 5  # a FIFO is looked at with stat, never opened (that would block)
    assert _refusal(str(data / "a.txt"), roots, want="dir") == _refusal(str(data / "nope"), roots, want="dir")
    assert _refusal("/etc/passwd", ()) == missing  # no roots: nothing at all is readable


def test_a_folder_is_refused_for_one_bad_entry(tree, tmp_path):
    data, roots = tree
    os.mkfifo(data / "docs" / "pipe.txt")
    assert "may read" in _refusal(str(data), roots)
    os.unlink(data / "docs" / "pipe.txt")
    (data / "docs" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    assert "may read" in _refusal("docs", roots)
    os.unlink(data / "docs" / "leak.txt")
    (data / "docs" / "loop").symlink_to(data / "docs")  # a loop inside the root is walked once
    assert confine("docs", roots, "p").n_files == 1
    with pytest.raises(InterpError, match="more than 2 files"):
        confine(str(data), roots, "p", max_entries=2)


# ----------------------------------------------------------------------------------------------------
# limits


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kw", [{}, {"gated": True, "act": "silu", "positional": "rotary", "n_kv_heads": 1},
                                {"d_mlp": 100, "tie_embeddings": True}])
def test_parameter_estimate_bounds_the_real_count(kw):
    """The estimate from config.json alone is an upper bound of the built model, and within 2x of it."""
    from dataclasses import asdict

    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.serving import estimate_parameters

    cfg = DecoderConfig(d_vocab=300, n_ctx=64, d_model=48, n_layers=3, n_heads=4, **kw)
    n = _count(HookedDecoder(cfg))
    est = estimate_parameters(json.loads(json.dumps(asdict(cfg), default=str)))
    assert n <= est <= 2 * n, (n, est)


def test_parameter_estimate_reads_transformers_configs():
    transformers = pytest.importorskip("transformers")
    from interp.report.serving import estimate_parameters

    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    n = _count(transformers.LlamaForCausalLM(cfg))
    assert n <= estimate_parameters(cfg.to_dict()) <= 2 * n
    nested = {"architectures": ["Gemma3ForConditionalGeneration"], "text_config": cfg.to_dict()}
    assert estimate_parameters(nested) == estimate_parameters(cfg.to_dict())  # the decoder inside a multimodal config


def test_a_huge_config_is_refused_before_anything_is_built(tmp_path):
    from interp.report.serving import check_model_size

    (tmp_path / "config.json").write_text(json.dumps({"d_vocab": 256, "n_ctx": 32, "d_model": 32, "n_layers": 10**6,
                                                      "n_heads": 2}))
    start = time.monotonic()
    per_layer = 4 * 32 * 32 + 3 * 32 * (4 * 32)  # attention + MLP (d_mlp defaults to 4 d_model)
    with pytest.raises(InterpError, match=rf"model folder: .*about {re.escape(f'{10**6 * per_layer:.2e}')} parameters.*"
                                          r"at most 1\.00e\+08 \(interp dashboard --max-model-params\)"):
        check_model_size(tmp_path, 1000, 10**8, "model folder")
    assert time.monotonic() - start < 1
    (tmp_path / "config.json").write_text(json.dumps({"n_layers": "many"}))
    with pytest.raises(InterpError, match="n_layers must be a non-negative integer"):
        check_model_size(tmp_path, 1000, 10**8, "model folder")
    (tmp_path / "config.json").write_text(json.dumps({"n_layers": 2, "d_model": 8}))
    with pytest.raises(InterpError, match="files"):  # weights on disk count too: 4 bytes per parameter
        check_model_size(tmp_path, 4 * 10**8 + 4, 10**8, "model folder")


def test_corpus_cut_to_the_byte_limit(tmp_path):
    from interp.report.serving import cap_text, corpus_prefix

    text = tmp_path / "big.jsonl"
    rows = [json.dumps({"text": f"row {i} é"}) + "\n" for i in range(100)]
    text.write_text("".join(rows), encoding="utf-8")
    size = text.stat().st_size
    same, note = corpus_prefix(text, size, False, size, tmp_path / "cut", "corpus path")
    assert same == text and note is None
    cut, note = corpus_prefix(text, size, False, 100, tmp_path / "cut", "corpus path")
    got = cut.read_text(encoding="utf-8")
    assert got == "".join(rows[: len(got.splitlines())]) and 0 < len(got.encode()) <= 100  # whole rows only
    assert f"of {size / 1e6:.1f} MB" in note and "--max-corpus-mb" in note
    one_line = tmp_path / "line.txt"
    one_line.write_text("é" * 100, encoding="utf-8")  # 2 bytes a character: a cut at 51 splits one
    cut, _ = corpus_prefix(one_line, 200, False, 51, tmp_path / "cut", "corpus path")
    assert cut.read_text(encoding="utf-8") == "é" * 25
    for path, is_dir in ((tmp_path / "t.parquet", False), (tmp_path, True)):
        with pytest.raises(InterpError, match="--max-corpus-mb"):
            corpus_prefix(path, 10**9, is_dir, 10**6, tmp_path / "cut", "corpus path")
    assert cap_text("aé" * 10, 5, "the pasted text")[0] == "aéa"
    assert cap_text("short", 5, "x") == ("short", None)


def test_time_limit_stops_this_threads_forward_passes_only():
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.serving import time_limit

    model = HookedDecoder(DecoderConfig(d_vocab=50, n_ctx=16, d_model=16, n_layers=2, n_heads=2)).eval()
    tokens = torch.zeros(1, 8, dtype=torch.long)
    other = []
    model(tokens)  # warm: the first call is the slowest
    with time_limit(model, 0.5, "corpus scan"):
        model(tokens)  # within the limit
        time.sleep(0.6)
        t = threading.Thread(target=lambda: other.append(model(tokens)))
        t.start()
        t.join()
        with pytest.raises(InterpError, match=r"corpus scan: stopped at the 0\.5 s limit .*--scan-seconds"):
            model(tokens)
    assert len(other) == 1  # another session's forward pass is not stopped
    model(tokens)  # the hooks are gone afterwards
    assert not model._forward_pre_hooks and not any(b._forward_pre_hooks for b in model.blocks)


# ----------------------------------------------------------------------------------------------------
# interp dashboard --host


def test_dashboard_refuses_a_remote_host_without_the_flag(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "run_child", lambda cmd, cwd=None: calls.append(cmd) or 0)
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        assert cli.main(["dashboard", "--host", host]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--host {host}" in err and "--allow-remote" in err
    assert calls == []  # refused before streamlit starts
    for host in ("127.0.0.1", "localhost", "::1"):
        assert cli.main(["dashboard", "--host", host]) == 0
        assert "warning" not in capsys.readouterr().err
    assert cli.main(["dashboard", "--host", "0.0.0.0", "--allow-remote", "--data-dir", "."]) == 0
    assert "warning: --host 0.0.0.0" in capsys.readouterr().err
    app_args = calls[-1][calls[-1].index("--") + 1:]
    assert "--allow-remote" in app_args and app_args[app_args.index("--data-dir") + 1] == str(Path.cwd())
    assert cli.main(["dashboard", "--data-dir", "/no/such/folder"]) == 2


def test_streamlit_config_binds_loopback():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"


# ----------------------------------------------------------------------------------------------------
# escaping


def test_generate_prints_control_bytes_escaped(tmp_path, capsys):
    """A model wired to sample ESC (0x1b) after any prompt: the terminal gets "\\x1b", never the byte."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.inputs import byte_tokenizer

    model = HookedDecoder(DecoderConfig(d_vocab=256, n_ctx=32, d_model=16, n_layers=1, n_heads=2),
                          tokenizer=byte_tokenizer())
    with torch.no_grad():
        model.unembed.W_U_param.zero_()
        model.unembed.b_U.zero_()
        model.unembed.b_U[0x1B] = 10.0
    model.save(tmp_path / "esc")
    assert cli.main(["generate", "hi", "--model", str(tmp_path / "esc"), "--temperature", "0",
                     "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out == "hi" + "\\x1b" * 3 + "\n" and "\x1b" not in out


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_markdown_report_keeps_hostile_text_inert(tmp_path):
    """A prompt that tries to close its fence and a model named like markup: rendered by markdown-it (as
    GitHub would, tables on), the page has no <img>/<script> element and shows the prompt as it was typed."""
    markdown_it = pytest.importorskip("markdown_it")
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report import ReportOptions, collect_report, render_html, render_markdown
    from interp.report.inputs import byte_tokenizer

    torch.manual_seed(0)
    model = HookedDecoder(DecoderConfig(d_vocab=256, n_ctx=128, d_model=16, n_layers=1, n_heads=2,
                                        name="<img src=x onerror=alert(3)>[x](javascript:alert(4))"),
                          tokenizer=byte_tokenizer()).eval()
    data = collect_report(model, HOSTILE, ReportOptions(k_next=3, k_neurons=2, n_answer_neurons=1, k_answers=2,
                                                        n_pattern_heads=1, superposition_sets=("W_E",),
                                                        max_pairs=100, hist_pairs=50, corpus=None))
    md = render_markdown(data)
    page = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    parser = _Tags()
    parser.feed(page)
    assert {"img", "script", "a"}.isdisjoint(parser.tags), sorted(set(parser.tags))
    assert '<code class="language-text">' + html.escape(HOSTILE, quote=False) in page  # shown as typed
    fence = re.search(r"^(`{3,})text$", md, re.MULTILINE).group(1)
    assert len(fence) > max(len(r) for r in re.findall(r"`+", HOSTILE))
    # the HTML report of the same data: every embedded JSON parses and holds no raw <, > or &
    html_page = render_html(data)
    blobs = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', html_page, re.DOTALL)
    assert blobs and all(not re.search(r"[<>&\u2028\u2029]", b) for b in blobs)
    for b in blobs:
        json.loads(b)


def test_attention_json_cannot_swallow_the_page():
    import pandas as pd

    from interp.report.figures import show_token
    from interp.report.widgets import attention_view, decode_attention_data

    strs = ["<!--<script>", "</script>", "&amp;", "\u2028", ">"]
    pats = pd.DataFrame([(0, 0, q, k, 1.0 / (q + 1)) for q in range(5) for k in range(q + 1)],
                        columns=["layer", "head", "query_pos", "key_pos", "weight"])
    body = attention_view(strs, pats, [(0, 0)])
    blob = re.search(r'<script type="application/json" class="attn-data">(.*?)</script>', body, re.DOTALL).group(1)
    assert not re.search(r"[<>&\u2028\u2029]", blob)
    data = json.loads(blob)
    assert data["tokens"] == [show_token(t) for t in strs]  # the same strings, read back
    assert decode_attention_data(data).shape == (1, 5, 5)
