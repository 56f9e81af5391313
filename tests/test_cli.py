"""The `interp` command and the probe scripts: help, outputs, errors, atomic writes, delegation.

Numbers a probe writes are compared with fresh analyzer calls or independent references (the model's
softmax, a greedy loop without the KV cache), never with themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp import cli
from interp.report.inputs import encode_prompt, load_model
from interp.report.probes import PROBES
from interp.report.probes import main as probe_main
from interp.report.readback import check_well_formed, read_tables

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Hello world, hello"


@pytest.fixture(scope="module")
def model():
    return load_model()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


# ----------------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize("command", ["report", "dashboard", "probe", "generate", "train", "bench", "models"])
def test_every_subcommand_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out.lower() and f"interp {command}" in out


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("report", "dashboard", "probe", "generate", "train", "bench", "models"):
        assert command in out


@pytest.mark.parametrize("name", list(PROBES))
def test_every_probe_has_help_and_a_script(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["probe", name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--prompts", "--json", "--csv", "--html", "--force"):
        assert flag in out
    assert "Example" in out
    script = (ROOT / "probes" / f"{name}.py").read_text()
    assert f'main("{name}")' in script  # the script is a thin wrapper around the shared main


# ----------------------------------------------------------------------------------------------------
# report


def test_report_default_model_writes_a_parsable_file_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "report.html"
    args = ["report", PROMPT, "--out", str(out), "--max-pairs", "500", "--neurons", "3", "--heads", "1",
            "--sets", "W_E", "--quiet"]
    assert cli.main(args) == 0
    html = out.read_text(encoding="utf-8")
    assert check_well_formed(html) == []
    assert {"model", "next_tokens", "lens_grid", "head_roles", "neurons_contribution", "superposition"} <= set(
        read_tables(html))
    assert cli.main(args) == 2
    assert "--force" in _one_line_error(capsys)
    md = tmp_path / "report.md"
    assert cli.main(args[:3] + [str(md)] + args[4:]) == 0
    assert md.read_text(encoding="utf-8").startswith("# interp report")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["report", ""], "non-empty"),
        (["report", "hi", "--model", "./no/such/folder"], "no folder"),
        (["report", "hi", "--model", "no-such-zoo-model"], "no model called"),
        (["report", "x" * 50_000], "characters"),
        (["report", "hi", "--format", "md", "--out", "/no/such/dir/r.md"], "does not exist"),
        (["generate", "hi", "--top-p", "2"], "top_p"),
        (["probe", "no_such_probe"], "unknown probe"),
        (["probe", "attention", "hi", "--layer", "0"], "--layer and --head"),
        (["probe", "attention", "hi", "--layer", "99", "--head", "0"], "layers"),
        (["probe", "neurons", "hi", "--target", "not one token"], "target"),
        (["probe", "logit_lens"], "give a prompt"),
        (["probe", "patching", "--clean", "a b"], "--corrupted"),
        (["probe", "logit_lens", "hi", "--prompts", "/no/such/file.txt"], "--prompts"),
        (["bench", "no_such_benchmark"], "no benchmark"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(args, needle, capsys):
    assert cli.main(args) == 2
    assert needle in _one_line_error(capsys)


def test_too_long_prompt_names_n_ctx(model, capsys):
    assert cli.main(["probe", "logit_lens", "ab " * model.cfg.n_ctx]) == 2
    assert "n_ctx" in _one_line_error(capsys)


def test_ctrl_c_leaves_no_file(tmp_path, monkeypatch, capsys):
    from interp.report import data

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "collect_report", interrupted)
    assert cli.main(["report", PROMPT, "--out", str(tmp_path / "r.html"), "--quiet"]) == 130
    monkeypatch.setattr(PROBES["logit_lens"], "run", interrupted)
    assert probe_main("logit_lens", [PROMPT, "--json", str(tmp_path / "x.json"), "--quiet"]) == 130
    assert list(tmp_path.iterdir()) == []
    assert "interrupted" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# probes: files and numbers


def test_logit_lens_probe_files_match_the_analyzer(model, tmp_path):
    from interp.analysis.logit_lens import logit_lens, summarize_lens

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\nThe cat sat\n\nOnce upon a time\n", encoding="utf-8")
    paths = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "html")}
    argv = ["--prompts", str(prompts), "--k", "2", "--quiet"] + [a for k, p in paths.items() for a in (f"--{k}", str(p))]
    assert cli.main(["probe", "logit_lens", *argv]) == 0
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["probe"] == "logit_lens" and [r["prompt"] for r in doc["results"]] == ["The cat sat", "Once upon a time"]
    for result in doc["results"]:
        ref = summarize_lens(logit_lens(model, encode_prompt(model, result["prompt"]), k=2))
        cells = pd.DataFrame(result["tables"]["cells"])
        np.testing.assert_allclose(cells.top_prob.to_numpy(), ref.top_prob.to_numpy(), rtol=1e-12)
        assert list(cells.top_token) == list(ref.top_token)
        assert "grid" not in result["tables"]  # the wide terminal view is not duplicated into files
    csv = pd.read_csv(paths["csv"], keep_default_na=False)
    assert set(csv.prompt) == {"The cat sat", "Once upon a time"} and set(csv.table) == {"target_by_layer", "cells"}
    html = paths["html"].read_text(encoding="utf-8")
    assert check_well_formed(html) == [] and "cells" in read_tables(html)
    # existing outputs are refused before any work, and replaced with --force
    assert cli.main(["probe", "logit_lens", *argv]) == 2
    assert cli.main(["probe", "logit_lens", *argv, "--force"]) == 0


def _run_json(tmp_path, name, *args) -> dict:
    out = tmp_path / f"{name}-{len(list(tmp_path.glob('*.json')))}.json"
    assert probe_main(name, [*args, "--json", str(out), "--quiet"]) == 0
    return json.loads(out.read_text(encoding="utf-8"))["results"]


def test_generate_probe_distribution_and_greedy_text(model, tmp_path, capsys):
    res = _run_json(tmp_path, "generate", PROMPT, "--top-k", "3", "--k", "5", "--max-new-tokens", "4", "--samples", "2")
    table = pd.DataFrame(res[0]["tables"]["next_token"])
    tokens = encode_prompt(model, PROMPT)
    with torch.no_grad():
        logits = model(tokens)[0, -1].double()
    probs = torch.softmax(logits, -1)
    top = probs.topk(5)
    np.testing.assert_allclose(table.prob.to_numpy(), top.values.numpy(), rtol=1e-6)
    # top-k=3 at T=1: the sampler draws from the 3 best, renormalised
    want = np.r_[top.values[:3].numpy() / top.values[:3].sum().item(), 0, 0]
    np.testing.assert_allclose(table.sampled_prob.to_numpy(), want, rtol=1e-6, atol=1e-12)
    assert [s["seed"] for s in res[0]["tables"]["samples"]] == [0, 1]

    # `interp generate` at temperature 0 equals a plain greedy loop without the KV cache
    ids = tokens.clone()
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    capsys.readouterr()
    assert cli.main(["generate", PROMPT, "--temperature", "0", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == model.to_string(ids[0])


def test_attention_and_neurons_probes_match_the_analyzers(model, tmp_path):
    from interp.analysis.attention import head_scores, top_attended
    from interp.analysis.neurons import top_neurons

    tokens = encode_prompt(model, PROMPT)
    res = _run_json(tmp_path, "attention", PROMPT, "--layer", "1", "--head", "0", "--top", "2")[0]["tables"]
    ref = head_scores(model, tokens)
    roles = pd.DataFrame(res["head_roles"])
    want = ref[ref.role == "previous_token"].sort_values(["layer", "head"]).score.to_numpy()
    np.testing.assert_allclose(roles.previous_token.to_numpy(), want, rtol=1e-12)
    top = pd.DataFrame(res["L1H0_top_attended"])
    np.testing.assert_allclose(top.weight.to_numpy(), top_attended(model, tokens, layers=1, heads=0, k=2).weight, rtol=1e-12)

    res = _run_json(tmp_path, "neurons", PROMPT, "--k", "4", "--answers", "1", "--answer-k", "2")[0]["tables"]
    ref = top_neurons(model, tokens, k=4)
    got = pd.DataFrame(res["by_contribution"])
    np.testing.assert_allclose(got.contribution.to_numpy(), ref[ref.ranked_by == "contribution"].contribution, rtol=1e-12)
    assert len(res["answers"]) == 4  # 2 raising + 2 lowering tokens of the top contributor


def test_patching_probe_matches_the_analyzers(model, tmp_path):
    """The README's induction example: L1H3 is the head that restores the copied name."""
    from interp.analysis.causal import activation_patching, direct_logit_attribution

    clean = "The letter from Jane was read aloud, and then the letter from"
    corrupted = clean.replace("Jane", "Moses")
    if len(model.to_tokens(clean)[0]) != len(model.to_tokens(corrupted)[0]):
        pytest.skip("the default model's tokenizer splits the names differently")
    res = _run_json(tmp_path, "patching", "--clean", clean, "--corrupted", corrupted, "--answer", " Jane",
                    "--wrong", " Moses", "--top", "5")[0]["tables"]
    kw = {"answer": " Jane", "wrong": " Moses"}
    ref = activation_patching(model, clean, corrupted, where="z", by_position=False, **kw)
    heads = pd.DataFrame(res["heads"])
    np.testing.assert_allclose(heads.effect.to_numpy(), ref.effect.to_numpy(), rtol=1e-9)
    if not getattr(model, "_interp_byte_tokenizer", False):
        assert tuple(heads.loc[heads.normalised.idxmax(), ["layer", "head"]]) == (1, 3)
    dla = pd.DataFrame(res["dla"])
    want = direct_logit_attribution(model, clean, " Jane", " Moses").set_index("component").contribution
    np.testing.assert_allclose(dla.contribution.to_numpy(), want[dla.component].to_numpy(), rtol=1e-9)
    assert "layer_by_position" not in res and len(res["resid_pre"]) == 2 * len(model.to_tokens(clean)[0])


def test_superposition_probe_weights_only(model, tmp_path, capsys):
    from interp.analysis.superposition import jl_min_dim, train_toy_model

    res = _run_json(tmp_path, "superposition", "--sets", "W_E", "--max-pairs", "300", "--toy", "--features", "6",
                    "--hidden", "2", "--steps", "50", "--jl", "1000", "0.2")[0]
    assert res["prompt"] is None
    assert res["tables"]["direction_sets"][0]["count"] == model.cfg.d_vocab
    assert res["tables"]["jl"][0]["min_dim"] == jl_min_dim(1000, 0.2)
    toy = train_toy_model(6, 2, feature_probability=0.1, steps=50, seed=0)
    np.testing.assert_allclose([f["norm"] for f in res["tables"]["toy_features"]], toy.feature_norms, rtol=1e-12)
    # without --quiet the toy model's training (minutes at large sizes) is announced on stderr
    capsys.readouterr()
    assert probe_main("superposition", ["--sets", "W_E", "--max-pairs", "300", "--toy", "--features", "6",
                                        "--hidden", "2", "--steps", "50"]) == 0
    assert "training a toy model (6 features in 2 dims, 50 Adam steps)" in capsys.readouterr().err


def test_linear_probe_builtin_task_and_labelled_file(model, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("The cat sat on the mat.\nA dog ran to the park.\nWe go out in the sun.\n", encoding="utf-8")
    res = _run_json(tmp_path, "linear_probe", "--prompts", str(prompts), "--task", "space", "--hooks", "hook_embed",
                    "--matches", "2")[0]
    scores = pd.DataFrame(res["tables"]["scores"])
    assert list(scores.hook) == ["hook_embed"] and scores.metric.iloc[0] == "accuracy"
    if getattr(model, "_interp_byte_tokenizer", False):
        # every space is the same byte token: the embedding separates it perfectly
        assert scores.test.iloc[0] == 1.0
        w_e = [m for m in res["tables"]["direction_matches"] if m["kind"] == "W_E"]
        assert w_e[0]["index"] == ord(" ")
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{i % 2}\tsample number {i} {'yes' if i % 2 else 'no'}\n" for i in range(12)))
    res = _run_json(tmp_path, "linear_probe", "--labels", str(labels), "--hooks", "resid_post", "--matches", "0")[0]
    assert len(res["tables"]["scores"]) == model.cfg.n_layers


def test_probe_script_runs_as_a_program(tmp_path):
    out = tmp_path / "lens.json"
    proc = subprocess.run([sys.executable, str(ROOT / "probes" / "logit_lens.py"), "Hi there", "--k", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "target_by_layer" in proc.stdout  # the terminal tables
    assert json.loads(out.read_text(encoding="utf-8"))["results"][0]["prompt"] == "Hi there"


# ----------------------------------------------------------------------------------------------------
# delegation: train, bench, dashboard, models


def test_train_delegates_to_interp_train(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "prepare", "--help"])
    assert e.value.code == 0
    assert "--tokenizer" in capsys.readouterr().out  # interp.train's own parser answered


def test_bench_runs_a_script_by_name(tmp_path, monkeypatch, capsys):
    (tmp_path / "hello.py").write_text("import sys, pathlib\npathlib.Path(sys.argv[1]).write_text('ran ' + sys.argv[2])\n")
    monkeypatch.setattr(cli, "BENCHMARKS", tmp_path)
    marker = tmp_path / "marker.txt"
    assert cli.main(["bench", "hello", str(marker), "fast"]) == 0
    assert marker.read_text() == "ran fast"
    assert cli.main(["bench"]) == 0
    assert "hello" in capsys.readouterr().out


def test_dashboard_starts_streamlit_on_the_app(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "run_child", lambda cmd, cwd=None: calls.append(cmd) or 0)
    assert cli.main(["dashboard", "--port", "8999", "--model", "m", "--prompt", "p"]) == 0
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(ROOT / "apps" / "dashboard.py")
    assert "8999" in cmd and "127.0.0.1" in cmd and cmd[-4:] == ["--model", "m", "--prompt", "p"]
    app_args = cmd[cmd.index("--") + 1:]  # the serving limits travel to the app after --
    assert app_args[app_args.index("--max-scan-tokens") + 1] == "65536" and "--allow-remote" not in app_args


def test_models_lists_the_zoo_with_card_lines(tmp_path, monkeypatch, capsys):
    from interp import zoo as loading  # the zoo is listed by interp.zoo (no torch)
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    monkeypatch.setattr(loading, "ZOO", tmp_path / "empty")
    assert cli.main(["models"]) == 0
    assert "no models" in capsys.readouterr().out
    zoo = tmp_path / "zoo"
    HookedDecoder(DecoderConfig(d_vocab=20, n_ctx=8, d_model=8, n_layers=1, n_heads=1)).save(zoo / "tiny-a")
    (zoo / "tiny-a" / "README.md").write_text("\n# tiny-a: a test model\n\nmore text\n")
    monkeypatch.setattr(loading, "ZOO", zoo)
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "* tiny-a  n_ctx 8      tiny-a: a test model" in out  # the context length read from its config.json


def test_terminal_tables_fit_80_columns_without_wrapping_numbers():
    import io

    from rich.console import Console

    from interp.analysis.superposition import direction_set_stats
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.probes import ProbeOutput, _display, print_tables

    torch.manual_seed(0)
    m = HookedDecoder(DecoderConfig(d_vocab=64, n_ctx=8, d_model=16, n_layers=2, n_heads=2))
    stats = direction_set_stats(m, sets=("W_E", "W_in", "W_out"), max_pairs=200)
    stats.loc[0, "mean_abs_cos"] = 1.537e-4  # a number in scientific notation ("1.537e-0 / 4" when wrapped)
    buf = io.StringIO()
    print_tables([ProbeOutput({"direction_sets": stats})], console=Console(file=buf, width=80), max_rows=50)
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = {_display(v) for c in stats.columns for v in stats[c] if not isinstance(v, str)}
    for cell in cells:  # every number printed whole on one line
        assert cell in text, cell
    assert "1.537e-04" in text


def test_models_lists_the_zoo_without_importing_torch():
    """`interp models` only reads folder names and model cards: torch and transformers (seconds on a cold machine)
    stay unimported, so it answers at once."""
    from interp.zoo import ZOO, zoo_models

    code = ("import sys; from interp.cli import main; main(['models']); "
            "print('imported:', sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=ZOO.parent)
    assert res.stdout.strip().endswith("imported: []"), res.stdout
    for name in zoo_models():
        assert name in res.stdout
