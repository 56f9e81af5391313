"""`interp scan`: the command writes what the library computes, refuses to overwrite, and reports bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from interp.cli import main
from interp.loading import ZOO

MODEL = "docs-bible-austen-2l"
TEXT = ("In the beginning God created the heaven and the earth.\n\nIt is a truth universally acknowledged, that "
        "a single man in possession of a good fortune, must be in want of a wife.\n\nAnd God said, Let there be "
        "light: and there was light.")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(not (ZOO / MODEL).is_dir(), reason="the shipped model is not in models/")
def test_scan_commands_write_what_the_library_computes(tmp_path, capsys):
    import interp
    from interp.analysis.neurons import scan_top_contexts
    from interp.data import ActivationDataset, Corpus, activation_stats

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    common = ["--model", MODEL, "--doc-sep", "\n\n", "--seq-len", "16", "--overlap", "4", "--quiet"]
    assert main(["scan", "neurons", str(corpus), "--out", str(tmp_path / "n"), "--layers", "1", "--k", "2",
                 *common]) == 0
    got = pd.read_parquet(tmp_path / "n" / "top_contexts.parquet")
    model = interp.load(MODEL)
    docs = Corpus.from_path(corpus, doc_sep="\n\n")
    want = scan_top_contexts(model, docs, layers=1, k=2, seq_len=16, overlap=4, progress=False)
    assert got.doc.nunique() == 3
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5, atol=1e-6)
    # a finished scan is not replaced without --force
    assert main(["scan", "neurons", str(corpus), "--out", str(tmp_path / "n"), *common]) == 2
    assert "--force" in capsys.readouterr().err
    # the summary lists each neuron's best context (ranks are 1-based), strongest first
    assert main(["scan", "neurons", str(corpus), "--out", str(tmp_path / "n"), "--layers", "1", "--k", "2",
                 "--show", "3", "--force", *common[:-1]]) == 0
    printed = capsys.readouterr().out.splitlines()
    best = want[want["rank"] == 1].sort_values("activation", ascending=False).head(3)
    assert "Empty DataFrame" not in printed[0] and printed[0].split()[:3] == ["layer", "neuron", "activation"]
    assert [tuple(map(int, line.split()[:2])) for line in printed[1:4]] == list(zip(best.layer, best.neuron))

    assert main(["scan", "stats", str(corpus), "--out", str(tmp_path / "s.csv"), "--hooks", "mlp.hook_post",
                 *common]) == 0
    table = pd.read_csv(tmp_path / "s.csv")
    ref = activation_stats(model, docs, "mlp.hook_post", seq_len=16, overlap=4, progress=False)
    pd.testing.assert_frame_equal(table, ref, check_exact=False, rtol=1e-6, atol=1e-9)
    assert main(["scan", "stats", str(corpus), "--out", str(tmp_path / "s.csv"), *common]) == 2

    assert main(["scan", "activations", str(corpus), "--out", str(tmp_path / "a"), "--hooks",
                 "blocks.0.hook_resid_post", "--dtype", "float16", *common]) == 0
    ds = ActivationDataset(tmp_path / "a")
    assert len(ds) == table["count"].iloc[0] and ds.manifest["hooks"]["blocks.0.hook_resid_post"]["dtype"] == "float16"
    assert main(["scan", "neurons", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "m"), *common]) == 2
    assert "corpus" in capsys.readouterr().err
