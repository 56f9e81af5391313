"""The edges and steering probes: their tables equal fresh analyzer calls; bad input is one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from interp import cli
from interp.report.inputs import load_model
from interp.report.probes import main as probe_main

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: two threads only oversubscribe

CLEAN = "The letter from Jane was read aloud, and then the letter from"
CORRUPTED = CLEAN.replace("Jane", "Moses")


@pytest.fixture(scope="module")
def model():
    return load_model()


def _tables(tmp_path, name, *args) -> dict:
    out = tmp_path / f"{name}.json"
    assert probe_main(name, [*args, "--json", str(out), "--quiet"]) == 0
    return json.loads(out.read_text(encoding="utf-8"))["results"][0]["tables"]


def test_edges_probe_matches_the_analyzer(model, tmp_path):
    from interp.analysis.circuits.edges import edge_attribution

    if len(model.to_tokens(CLEAN)[0]) != len(model.to_tokens(CORRUPTED)[0]):
        pytest.skip("the default model's tokenizer splits the names differently")
    res = _tables(tmp_path, "edges", "--clean", CLEAN, "--corrupted", CORRUPTED, "--answer", " Jane", "--wrong",
                  " Moses", "--method", "eap", "--top", "6")
    ref = edge_attribution(model, CLEAN, CORRUPTED, answer=" Jane", wrong=" Moses", method="eap").head(6)
    top = pd.DataFrame(res["top_edges"])
    assert top.sender.tolist() == ref.sender.tolist() and top.receiver.tolist() == ref.receiver.tolist()
    np.testing.assert_allclose(top.score.to_numpy(), ref.score.to_numpy(), rtol=1e-6)
    curve = pd.DataFrame(res["faithfulness"])
    assert curve.n_edges.iloc[0] == 0 and curve.n_edges.iloc[-1] == ref.attrs["n_edges"]
    np.testing.assert_allclose(curve.faithfulness.iloc[[0, -1]].to_numpy(), [0.0, 1.0], atol=1e-4)


def test_steering_probe_matches_the_analyzer(model, tmp_path):
    from interp.analysis.steering import steering_effect, steering_vector

    hook = "blocks.1.hook_resid_pre"
    res = _tables(tmp_path, "steering", "The king said", "--positive", "love and joy", "--negative", "war and death",
                  "--hook", hook, "--scale", "3", "--new-tokens", "3", "--k", "3")
    vec = steering_vector(model, ["love and joy"], ["war and death"], hook, position="mean")
    ref = steering_effect(model, "The king said", vec, hook, [0.0, 3.0], k=3, max_new_tokens=3)
    got = pd.DataFrame(res["steering"])
    np.testing.assert_allclose(got.kl.to_numpy(), ref.kl.to_numpy(), rtol=1e-6, atol=1e-9)
    assert got.kl.iloc[0] == 0 and got.generation.tolist() == ref.generation.tolist()


def test_steering_probe_with_an_sae_feature(model, tmp_path):
    """--sae default --feature N steers along that feature's decoder row at the SAE's own hook."""
    from interp.analysis.sae import load_sae
    from interp.analysis.steering import steering_effect
    from interp.report.sae_section import default_sae_folder

    sae = load_sae(default_sae_folder(model))
    res = _tables(tmp_path, "steering", "The king said", "--sae", "default", "--feature", "3", "--scale", "5",
                  "--new-tokens", "0")
    ref = steering_effect(model, "The king said", sae.W_dec[3].detach(), sae.cfg.hook_name, [0.0, 5.0])
    np.testing.assert_allclose(pd.DataFrame(res["steering"]).kl.to_numpy(), ref.kl.to_numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("argv, text", [
    (["probe", "edges", "--clean", "a b"], "--corrupted"),
    (["probe", "edges", "--clean", CLEAN, "--corrupted", "a", "--answer", "1", "--wrong", "2"], "same number of tokens"),
    (["probe", "steering", "hi", "--positive", "a", "--negative", "b", "--hook", "blocks.99.hook_resid_pre"], "hook:"),
    (["probe", "steering", "hi", "--positive", "a"], "--negative"),
    (["probe", "steering", "hi", "--sae", "default"], "--feature"),
])
def test_bad_input_is_one_line(argv, text, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and text in err, err
