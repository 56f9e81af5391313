"""Bad input, driven through the real `interp` command (subprocesses in a temporary directory) and the Python API.

Every case checks what a user sees: exit status 2, exactly one line on stderr, no "Traceback", a message that
names the argument or file; and that nothing the user had in the directory changed and no partial file was
left behind (the directory is hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import interp
from interp.errors import InterpError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "docs-bible-austen-2l"


def tree_digest(folder: Path) -> dict[str, str]:
    """Every entry below ``folder``: files by content hash, links by target, other nodes by kind."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link->" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir" if p.is_dir() else "node"
    return out


def interp_cmd(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "interp.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def broken_models(base: Path) -> dict[str, Path]:
    """Copies of the shipped model, each broken in one way a user meets."""
    made = {}

    def copy(name: str) -> Path:
        dest = base / name
        shutil.copytree(SHIPPED, dest)
        made[name] = dest
        return dest

    m = copy("truncated")
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 3])
    (copy("empty") / "model.safetensors").write_bytes(b"")
    m = copy("missing_keys")
    cfg = json.loads((m / "config.json").read_text())
    del cfg["d_model"], cfg["n_layers"]
    (m / "config.json").write_text(json.dumps(cfg))
    (copy("bad_json") / "config.json").write_text('{"d_model": 128, "n_layers": ')
    m = copy("nan_weights")
    state = load_file(str(m / "model.safetensors"))
    state["blocks.1.mlp.W_in"][3, 5] = float("nan")
    save_file(state, str(m / "model.safetensors"))
    (copy("no_tokenizer") / "tokenizer.json").unlink()
    return made


# (arguments, words the one-line message must contain); {m} is the folder of broken models
ERROR_CASES = [
    (["report", "hi", "--model", "{m}/truncated"], ["model.safetensors", "truncated"]),
    (["report", "hi", "--model", "{m}/empty"], ["model.safetensors", "empty"]),
    (["report", "hi", "--model", "{m}/missing_keys"], ["config.json", "d_model", "n_layers"]),
    (["report", "hi", "--model", "{m}/bad_json"], ["config.json", "not valid JSON"]),
    (["report", "hi", "--model", "{m}/nan_weights"], ["blocks.1.mlp.W_in", "NaN"]),
    (["report", "hi", "--model", "{m}/no_tokenizer"], ["tokenizer", "token ids"]),
    (["generate", "hi", "--model", "{m}/nan_weights", "--temperature", "0"], ["blocks.1.mlp.W_in"]),
    (["report", "hi", "--device", "cuda:0" if not torch.cuda.is_available() else "cuda:99"], ["--device", "cuda"]),
    (["report", "hi", "--device", "foo"], ["--device", "foo"]),
    (["probe", "logit_lens", "hi", "--device", "foo"], ["--device", "foo"]),
    (["report", "hi", "--out", "/proc/x.html"], ["--out", "/proc"]),
    (["report", "hi", "--out", "r.md", "--format", "html"], ["--format", "r.md"]),
    (["generate", "hi", "--temperature", "inf"], ["--temperature", "finite"]),
    (["generate", "hi", "--samples", "0"], ["--samples", "positive"]),
    (["probe", "generate", "hi", "--temperature", "nan"], ["--temperature"]),
    (["probe", "attention", "hi", "--layer", "-3", "--head", "0"], ["--layer", "[-2, 2)", "-3"]),
    (["probe", "attention", "hi", "--layer", "0", "--head", "4"], ["--head", "[-4, 4)"]),
    (["report", "hi", "--k", "0"], ["--k", "positive"]),
    (["report", "hi", "--out", "existing.html"], ["--force"]),
]


def test_the_command_fails_in_one_line_and_touches_nothing(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    broken_models(models)
    work = tmp_path / "work"
    work.mkdir()
    (work / "existing.html").write_text("a report somebody keeps\n")
    (work / "notes.txt").write_text("mine\n")
    before = tree_digest(tmp_path)

    def run(case):
        args = [a.replace("{m}", str(models)) for a in case[0]]
        return case, interp_cmd(*args, cwd=work)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, ERROR_CASES))
    for (args, needles), proc in results:
        err = proc.stderr.strip()
        assert proc.returncode == 2, (args, proc.returncode, err[-2000:])
        assert "Traceback" not in err, (args, err)
        assert len(err.splitlines()) == 1, (args, err)
        for needle in needles:
            assert needle.replace("{m}", str(models)) in err, (args, needle, err)
    assert tree_digest(tmp_path) == before  # nothing changed, no partial file anywhere


def test_a_bad_neuron_corpus_fails_in_one_line_naming_what_exists(tmp_path):
    """`interp report --corpus`: a missing split or column, an empty split, options a source cannot have, an
    unreachable hub dataset: one line naming the flag, the splits / columns found and what was given."""
    datasets = pytest.importorskip("datasets")
    work = tmp_path / "work"
    work.mkdir()
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"], "label": [0]}),
                               "validation": datasets.Dataset.from_dict({"text": ["b c"], "label": [1]}),
                               "empty": datasets.Dataset.from_dict({"text": ["", ""], "label": [2, 3]})})
    dd.save_to_disk(str(work / "saved"))
    dd["validation"].to_parquet(str(work / "v.parquet"))
    before = tree_digest(tmp_path)
    splits = "['empty', 'train', 'validation']"
    cases = [
        (["--corpus", "saved", "--corpus-split", "test"], ["--corpus-split", splits, "'test'"]),
        (["--corpus", "saved", "--corpus-split", "validation", "--corpus-field", "body"],
         ["--corpus-field", "['text', 'label']", "'body'"]),
        (["--corpus", "saved", "--corpus-split", "empty"], ["--corpus", "saved [empty]", "no text"]),
        (["--corpus", "v.parquet", "--corpus-field", "body"], ["--corpus-field", "['label', 'text']", "'body'"]),
        (["--corpus", "hf:no-such-dataset:train"], ["--corpus", "hub dataset 'no-such-dataset'"]),  # offline here
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: (c, interp_cmd("report", "hi", "--out", "r.html", *c[0], cwd=work)), cases))
    for (args, needles), proc in results:
        err = proc.stderr.strip()
        assert proc.returncode == 2, (args, proc.returncode, err[-2000:])
        assert "Traceback" not in err and len(err.splitlines()) == 1, (args, err)
        for needle in needles:
            assert needle in err, (args, needle, err)
    assert tree_digest(tmp_path) == before  # no report, no partial file, the corpora untouched


def test_report_writes_through_a_link_to_stdout_and_to_a_pipe(tmp_path):
    (tmp_path / "target.md").write_text("old\n")
    (tmp_path / "link.md").symlink_to("target.md")
    common = ["--neurons", "2", "--heads", "1", "--max-pairs", "200", "--sets", "W_E", "--k", "3", "--quiet"]
    proc = interp_cmd("report", "The LORD is my", "--out", "link.md", "--force", *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "link.md").is_symlink() and os.readlink(tmp_path / "link.md") == "target.md"
    assert (tmp_path / "target.md").read_text(encoding="utf-8").startswith("# interp report")
    # `-` is standard output
    proc = interp_cmd("report", "The LORD is my", "--out", "-", "--format", "md", *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# interp report")
    # a named pipe stays a pipe: the reader gets the report
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-m", "interp.cli", "report", "The LORD is my", "--out", str(fifo),
                               "--format", "md", *common], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    with open(fifo, encoding="utf-8") as f:  # blocks until the writer opens it
        received = f.read()
    assert writer.wait(timeout=240) == 0, writer.stderr.read()
    assert received.startswith("# interp report")
    assert not fifo.is_file() and fifo.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.md", "pipe.md", "target.md"]


def test_negative_layer_and_head_mean_from_the_end_and_are_labelled_with_the_real_index(tmp_path):
    out = tmp_path / "attn.json"
    proc = interp_cmd("probe", "attention", "The LORD is my shepherd", "--layer", "-1", "--head", "-1",
                      "--json", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tables = json.loads(out.read_text())["results"][0]["tables"]
    assert "L1H3_top_attended" in tables and not any("-1" in name for name in tables)


def test_a_capped_count_is_reported(tmp_path):
    out = tmp_path / "n.json"
    proc = interp_cmd("probe", "neurons", "The LORD is my", "--k", "100000", "--answers", "0", "--json", str(out),
                      "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model_cfg = json.loads((SHIPPED / "config.json").read_text())
    n_neurons = model_cfg["n_layers"] * (model_cfg.get("d_mlp") or 4 * model_cfg["d_model"])
    assert f"--k 100000 is more than the {n_neurons} MLP neurons" in proc.stderr
    rows = json.loads(out.read_text())["results"][0]["tables"]["by_contribution"]
    assert len(rows) == n_neurons


# ----------------------------------------------------------------------------------------------------
# the Python API


def test_the_api_names_the_broken_file(tmp_path):
    made = broken_models(tmp_path)
    expected = {"truncated": "truncated", "empty": "empty", "missing_keys": "d_model", "bad_json": "not valid JSON",
                "nan_weights": "blocks.1.mlp.W_in"}
    for name, needle in expected.items():
        with pytest.raises(InterpError, match=needle):
            interp.load(made[name])
    model = interp.load(made["no_tokenizer"])
    assert model.tokenizer is None
    assert model(torch.tensor([[5, 6, 7]])).shape == (1, 3, model.cfg.d_vocab)  # token ids still work
    with pytest.raises(InterpError, match="no tokenizer"):
        model("The LORD")


def test_non_finite_outputs_are_refused_by_analyzers_and_the_sampler():
    from interp.analysis.attention import head_scores
    from interp.analysis.logit_lens import logit_lens
    from interp.analysis.neurons import top_neurons
    from interp.generate import generate

    model = interp.load()
    with torch.no_grad():
        model.blocks[0].mlp.W_out[0, 0] = float("inf")  # e.g. an fp16 overflow after loading
    tokens = torch.tensor([[5, 6, 7, 8]])
    for call in (lambda: logit_lens(model, tokens), lambda: top_neurons(model, tokens),
                 lambda: head_scores(model, tokens), lambda: generate(model, tokens, temperature=0)):
        with pytest.raises(InterpError, match="NaN or inf"):
            call()
    with pytest.raises(InterpError, match="temperature"):
        generate(interp.load(), tokens, temperature=float("inf"))


def test_atomic_writes_keep_links_streams_and_permissions(tmp_path):
    from interp.io import atomic_write_text, write_benchmark_json
    from interp.report.output import check_writable

    target = tmp_path / "kept.txt"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o640
    with pytest.raises(InterpError, match="already exists"):
        check_writable(link)
    with pytest.raises(InterpError, match="folder"):
        check_writable(tmp_path)
    # a benchmark never replaces a result file without being asked
    first = write_benchmark_json({"a": 1}, tmp_path / "r.json", "x")
    with pytest.raises(InterpError, match="--force"):
        write_benchmark_json({"a": 2}, first, "x")
    assert json.loads(first.read_text()) == {"a": 1}
    write_benchmark_json({"a": 2}, first, "x", force=True)
    assert json.loads(first.read_text()) == {"a": 2}


def test_benchmark_default_output_is_a_new_file(tmp_path):
    from interp.io import fresh_path

    a = fresh_path(tmp_path, "forward-cpu")
    a.write_text("{}")
    b = fresh_path(tmp_path, "forward-cpu")
    assert a != b and not b.exists() and b.name.startswith("forward-cpu-")


# ----------------------------------------------------------------------------------------------------
# lifecycle and latency


def test_killing_interp_stops_its_child(tmp_path):
    """SIGTERM to `interp` (as `kill` sends) must not leave the child (Streamlit, a benchmark) running."""
    pid_file = tmp_path / "child.pid"
    child = f"import os, time, pathlib; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(120)"
    driver = (f"import sys; from interp.cli import run_child; "
              f"sys.exit(run_child([sys.executable, '-c', {child!r}]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", driver], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "child never started"
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the child outlived interp"
        time.sleep(0.05)


def test_help_does_not_import_torch():
    """`interp --help` and `interp CMD --help` answer at once: building the parsers imports no heavy module."""
    code = ("import sys, contextlib, io\nfrom interp import cli\nfrom interp.report import probes\n"
            "for argv in (['--help'], ['report', '--help'], ['probe', '--help'], ['generate', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        cli.main(argv)\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    probes.main('attention', ['--help'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'transformer_lens', 'pandas') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
