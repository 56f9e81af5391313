"""The dashboard as a hostile browser user meets it (``streamlit.testing.v1.AppTest``): every path typed is
confined to the model zoo and ``--data-dir``; everything else — system files, ``..`` and links leading out,
a FIFO — gets the same message as a missing file, at once, and nothing of it is shown. Models too large for
``--max-model-params`` are refused before they are built; corpora are cut to ``--max-corpus-mb``."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = str(Path(__file__).resolve().parents[1] / "apps" / "dashboard.py")
PROMPT = "the cat sat on the mat"
SECRET = "API_TOKEN=hunter2-outside-the-data-folder"
REFUSED = "is not a file or folder this dashboard may read"
SOURCE, UPLOAD = "file, folder or dataset", "uploaded file"
BOUND_S = 30  # a refusal is a stat, not a read: far below this even on a busy machine (a FIFO read never ends)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An app run as `interp dashboard --data-dir DATA --max-corpus-mb 1 --max-scan-tokens 4096` would run it,
    on a tiny model inside DATA, with a secret beside DATA and traps inside it; open on the Neurons page."""
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.inputs import byte_tokenizer

    root = tmp_path_factory.mktemp("served")
    data = root / "data"
    torch.manual_seed(3)
    HookedDecoder(DecoderConfig(d_vocab=256, n_ctx=48, d_model=32, n_layers=2, n_heads=2, name="hostile"),
                  tokenizer=byte_tokenizer()).save(data / "tiny")
    (root / "secret.txt").write_text(SECRET)
    (data / "link.txt").symlink_to(root / "secret.txt")
    (data / "etc").symlink_to("/etc")
    (data / "leaky").mkdir()
    (data / "leaky" / "ok.txt").write_text("the cat")
    (data / "leaky" / "secret.txt").symlink_to(root / "secret.txt")
    os.mkfifo(data / "fifo.txt")
    (data / "big.txt").write_text("the cat sat on the mat.\n" * 62_500)  # 1.5 MB
    shutil.copytree(data / "tiny", data / "huge")
    cfg = json.loads((data / "huge" / "config.json").read_text())
    (data / "huge" / "config.json").write_text(json.dumps({**cfg, "n_layers": 1_000_000}))
    argv = ["dashboard.py", "--data-dir", str(data), "--max-corpus-mb", "1", "--max-scan-tokens", "4096"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        at.sidebar.selectbox(key="model_choice").set_value("Local folder…").run()
        at.sidebar.text_input(key="model_path").set_value("tiny").run()  # relative: looked up in DATA
        at.sidebar.text_area(key="prompt").set_value(PROMPT).run()
        at.sidebar.radio(key="page").set_value("Neurons").run()
        at.radio(key="corpus_source").set_value(SOURCE).run()
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        yield at, data


def _shown(at) -> str:
    """Every text the page shows."""
    parts = [str(e.value) for kind in ("error", "info", "caption", "markdown", "code", "warning", "metric")
             for e in getattr(at, kind)]
    parts += [d.value.to_string() for d in at.dataframe]
    return "\n".join(parts)


def _refusal(at, key: str, text: str, sidebar: bool = False) -> str:
    start = time.monotonic()
    (at.sidebar if sidebar else at).text_input(key=key).set_value(text).run(timeout=BOUND_S)
    assert time.monotonic() - start < BOUND_S
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    shown = _shown(at)
    assert SECRET not in shown and "root:x:0" not in shown  # nothing of the file reaches the page
    return at.error[0].value.replace(repr(text), "PATH")


def test_corpus_paths_outside_the_data_folder_all_read_the_same(served):
    at, data = served
    missing = _refusal(at, "corpus_path", str(data / "nowhere.txt"))
    assert missing.startswith(f"corpus path: PATH {REFUSED}")
    for text in ("/etc/passwd", "/proc/self/environ", "/etc/", "/dev/zero", str(data / ".." / "secret.txt"),
                 "../secret.txt", "link.txt", "etc/passwd", "leaky", "fifo.txt", str(data / "fifo.txt"),
                 "hf:wikitext:wikitext-2-raw-v1:train", "~/.ssh/id_rsa"):
        assert _refusal(at, "corpus_path", text) == missing, text
    at.text_input(key="corpus_path").set_value("leaky/ok.txt").run()  # inside, a regular file: read
    assert not at.error, [e.value for e in at.error]


def test_model_and_sae_folders_are_confined_and_sized_before_building(served):
    at, data = served
    missing = _refusal(at, "model_path", str(data / "nowhere"), sidebar=True)
    for text in ("/etc", "..", "../secret.txt", str(data / "fifo.txt"), "gpt2", "openai-community/gpt2"):
        assert _refusal(at, "model_path", text, sidebar=True) == missing, text
    # n_layers 1,000,000 is refused from its config, before a layer is allocated
    msg = _refusal(at, "model_path", "huge", sidebar=True)
    assert msg.startswith("model folder: the model would have about") and "--max-model-params" in msg
    at.sidebar.text_input(key="model_path").set_value("tiny").run()
    at.sidebar.radio(key="page").set_value("SAE features").run()
    assert not at.error and at.info  # no SAE shipped with this model: the page says how to get one
    sae_missing = _refusal(at, "sae_path", str(data / "no-sae"))
    for text in ("/etc", "../", str(data / "fifo.txt")):
        assert _refusal(at, "sae_path", text) == sae_missing
    at.text_input(key="sae_path").set_value("").run()
    at.sidebar.radio(key="page").set_value("Neurons").run()
    at.radio(key="corpus_source").set_value(SOURCE).run()
    assert not at.error


def test_limits_say_what_was_cut(served):
    at, data = served
    assert at.select_slider(key="corpus_tokens").options == ["2048", "4096"]  # --max-scan-tokens 4096
    at.text_input(key="corpus_path").set_value("big.txt").run()
    assert not at.error, [e.value for e in at.error]
    cut = "read the first 1.0 MB of 1.5 MB (interp dashboard --max-corpus-mb 1)"
    assert [c.value for c in at.caption if cut in c.value] == [f"big.txt: {cut}"]
    shutil.copy(data / "big.txt", data / "tiny" / "heldout.txt")  # the model folder's own text is cut the same way
    try:
        at.run()
        at.radio(key="corpus_source").set_value("held-out text of the model").run()
        assert not at.error, [e.value for e in at.error]
        assert [c.value for c in at.caption if cut in c.value] == [f"heldout.txt: {cut}"]
    finally:
        (data / "tiny" / "heldout.txt").unlink()
    at.radio(key="corpus_source").set_value(SOURCE).run()


def test_an_upload_is_scanned_from_the_sessions_own_folder(served):
    from interp.analysis.neurons import neuron_profiles
    from interp.report.inputs import load_model

    at, data = served
    at.radio(key="corpus_source").set_value(UPLOAD).run()
    text = "the dog sat on the log, the dog sat\n"
    at.file_uploader(key="corpus_upload").upload("../../../etc/evil.txt", text.encode(), "text/plain").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    folder = Path(at.session_state["upload_dir"])
    assert [p.suffix for p in folder.iterdir()] == [".txt"] and not (data / "evil.txt").exists()
    at.button(key="scan").click().run()
    assert not at.error, [e.value for e in at.error]
    layer, neuron = (int(x) for x in at.selectbox(key="neuron_pick").value[1:].split("N"))
    model = load_model(str(data / "tiny"))
    ref = neuron_profiles(model, [text], [(layer, n) for n in range(model.cfg.d_mlp)], k=5, max_tokens=2048)
    want = ref.examples[ref.examples.neuron == neuron]
    np.testing.assert_allclose(at.session_state["examples"].activation.to_numpy(), want.activation.to_numpy(),
                               rtol=1e-6, atol=1e-7)
    at.radio(key="corpus_source").set_value(SOURCE).run()


def test_the_operators_model_folder_loads_as_given(served, monkeypatch):
    """`interp dashboard --model models/NAME`: a path relative to where the operator started it, trusted as given
    (and a root: a browser user may type it again, but nothing beside it)."""
    _, data = served
    monkeypatch.chdir(data)
    monkeypatch.setattr(sys, "argv", ["dashboard.py", "--model", "tiny", "--prompt", PROMPT])
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert at.sidebar.text_input(key="model_path").value == "tiny"
    assert {m.label: m.value for m in at.metric}["n_layers"] == "2"
    assert _refusal(at, "model_path", "huge", sidebar=True).startswith(f"model folder: PATH {REFUSED}")
