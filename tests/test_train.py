"""Data windows, the training loop, exact resume, export and the CLI — on tiny models and the text fixture."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import interp
from interp.errors import InterpError
from interp.train import main as train_main
from interp.train import trainer as trainer_mod
from interp.train.data import (
    BatchSchedule,
    TokenData,
    Windows,
    add_repeated_spans,
    eval_batches,
    prepare,
    write_token_files,
)
from interp.train.trainer import TrainConfig, export_model, latest_checkpoint, lr_at, train

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_corpus.txt"
TINY_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 4, "positional": "rotary"}


# ------------------------------------------------------------------------------------------------
# windows


def test_windows_targets_are_next_inputs_and_respect_stride():
    tokens = np.arange(1000, 1103, dtype=np.uint16)  # distinct values: position is recoverable
    for context, stride in [(8, 8), (8, 3), (16, 20), (1, 1), (102, 5)]:
        w = Windows(tokens, context, stride)
        expected = [s for s in range(len(tokens)) if s + context + 1 <= len(tokens)][::1]
        expected = [s for s in expected if s % stride == 0]
        assert len(w) == len(expected)
        for i in range(len(w)):
            x, y = w[i]
            assert x.shape == (context,) and y.shape == (context,)
            assert torch.equal(x[1:], y[:-1])  # target t == input t+1
            assert int(x[0]) == 1000 + i * stride  # window i starts at i * stride
            assert int(y[-1]) == 1000 + i * stride + context  # last target stays inside the stream
    assert len(Windows(tokens, 103, 1)) == 0  # 103 + 1 tokens needed, only 103 there


def test_windows_reject_bad_arguments():
    with pytest.raises(InterpError, match="context_length"):
        Windows(np.zeros(10, np.uint16), 0, 1)
    with pytest.raises(InterpError, match="stride"):
        Windows(np.zeros(10, np.uint16), 4, 0)
    with pytest.raises(InterpError, match="window index"):
        Windows(np.zeros(10, np.uint16), 4, 1).start(99)


def test_split_is_by_document_and_no_window_crosses_it(tmp_path):
    # Document d is made of the token d+1 only, so every token names its document.
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=200)
    docs = [[d + 1] * int(n) for d, n in enumerate(lengths)]
    meta = write_token_files(docs, tmp_path, eos_id=0, vocab_size=300, val_fraction=0.2, seed=3)
    data = TokenData(tmp_path)
    train_ids, val_ids = np.asarray(data.split("train")), np.asarray(data.split("val"))
    train_docs, val_docs = set(train_ids[train_ids > 0]), set(val_ids[val_ids > 0])
    assert train_docs.isdisjoint(val_docs) and train_docs | val_docs == set(range(1, 201))
    assert 20 <= len(val_docs) <= 60  # ~20 % of 200 documents
    # whole documents, each followed by one EOS
    for split, ids in (("train", train_ids), ("val", val_ids)):
        assert ids[-1] == 0 and meta["splits"][split]["tokens"] == len(ids)
        for d in set(ids[ids > 0]):
            assert (ids == d).sum() == lengths[d - 1]
    assert data.dtype == np.uint16 and isinstance(data.split("train"), np.memmap)
    for split, allowed in (("train", train_docs), ("val", val_docs)):
        w = Windows(data.split(split), 16, 5)
        for i in range(len(w)):
            x, y = w[i]
            seen = set(torch.cat([x, y]).tolist()) - {0}
            assert seen <= allowed


def test_batch_schedule_is_a_function_of_the_step_and_covers_each_epoch():
    w = Windows(np.arange(501, dtype=np.uint16), 8, 4)
    a, b = BatchSchedule(w, 4, seed=1), BatchSchedule(w, 4, seed=1)
    assert len(w) == 124
    seen = np.concatenate([a.indices(s) for s in range(31)])
    assert sorted(seen) == list(range(124))  # epoch 0 visits every window once
    for s in (0, 7, 3, 33):
        xa, ya = a.batch(s)
        xb, yb = b.batch(s)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(BatchSchedule(w, 4, seed=2).batch(0)[0], a.batch(0)[0])


def test_repeated_spans_copy_a_span_of_the_row():
    rows = np.arange(10 * 65).reshape(10, 65)  # all distinct tokens
    out = add_repeated_spans(rows, np.random.default_rng(0), prob=1.0, min_span=6, max_span=12)
    for r in range(10):
        values, counts = np.unique(out[r], return_counts=True)
        n_repeated = int((counts == 2).sum())
        assert 6 <= n_repeated <= 12  # one copied span of 6..12 tokens
        # the copy sits after the original and is contiguous
        dup = np.isin(out[r], values[counts == 2])
        first, second = np.flatnonzero(dup)[:n_repeated], np.flatnonzero(dup)[n_repeated:]
        assert np.all(np.diff(second) == 1) and second[0] > first[-1]
    assert np.array_equal(add_repeated_spans(rows, np.random.default_rng(0), 0.0), rows)
    # random spans: the pasted pair is random ids from the given range, identical in both places
    zeros = np.zeros((6, 65), dtype=np.int64)
    out = add_repeated_spans(zeros, np.random.default_rng(1), prob=1.0, min_span=10, max_span=10, random_frac=1.0,
                             vocab=(5, 50))
    for r in range(6):
        nz = np.flatnonzero(out[r])
        assert len(nz) == 20 and out[r][nz].min() >= 5 and out[r][nz].max() < 50
        assert np.array_equal(out[r][nz[:10]], out[r][nz[10:]])
    with pytest.raises(InterpError, match="vocab"):
        add_repeated_spans(zeros, np.random.default_rng(1), 1.0, random_frac=0.5)


def test_eval_batches_tile_in_order():
    w = Windows(np.arange(200, dtype=np.uint16), 9, 9)
    xs = torch.cat([x for x, _ in eval_batches(w, 4)])
    assert xs.shape[0] == len(w) and int(xs[1, 0]) == 9


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(data="", out="", steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    with pytest.raises(InterpError, match="warmup_steps"):
        TrainConfig(data="", out="", steps=5, warmup_steps=10)
    # time-based schedule: the cosine follows the share of the time budget used
    tcfg = TrainConfig(data="", out="", steps=10**6, warmup_steps=10, lr=1e-3, min_lr=1e-4, lr_schedule="time",
                       max_minutes=1.0)
    assert lr_at(500, tcfg, time_fraction=0.5) == pytest.approx(lr_at(60, cfg))
    assert lr_at(500, tcfg, time_fraction=1.7) == pytest.approx(1e-4)
    with pytest.raises(InterpError, match="max_minutes"):
        TrainConfig(data="", out="", lr_schedule="time")


# ------------------------------------------------------------------------------------------------
# training


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokens")
    prepare(FIXTURE, folder, folder / "tok-src.json", vocab_size=320, val_fraction=0.15, seed=0)
    return folder


def _cfg(token_dir, out, **kw):
    base = {"data": str(token_dir), "out": str(out), "steps": 12, "batch_size": 4, "context_length": 32,
            "stride": 16, "lr": 3e-3, "warmup_steps": 2, "eval_interval": 6, "eval_batches": 2, "log_interval": 3,
            "checkpoint_interval": 6, "seed": 0, "threads": 1, "progress": False, "model": dict(TINY_MODEL)}
    base.update(kw)
    return TrainConfig(**base)


def test_prepare_writes_tokens_with_eos_between_documents(token_dir):
    data = TokenData(token_dir)
    n_docs = len([d for d in FIXTURE.read_text(encoding="utf-8").split("\n\n") if d.strip()])
    tr, va = np.asarray(data.split("train")), np.asarray(data.split("val"))
    assert (tr == data.eos_id).sum() + (va == data.eos_id).sum() == n_docs
    assert data.meta["splits"]["val"]["documents"] >= 1
    assert (token_dir / "tokenizer.json").is_file()


def test_training_lowers_the_loss(token_dir, tmp_path):
    summary = train(_cfg(token_dir, tmp_path / "run", steps=40, eval_interval=40, lr=1e-2, repeat_prob=0.3))
    rows = json.loads((tmp_path / "run" / "log.json").read_text())
    first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
    assert first > math.log(320) - 0.5  # starts near uniform over the vocabulary
    assert last < first - 1.0
    assert summary["final_val_loss"] < math.log(320) - 0.5
    for name in ("log.csv", "loss.png", "summary.json", "latest.json"):
        assert (tmp_path / "run" / name).is_file()
    # a checkpoint folder is also a loadable model folder
    model = interp.load(str(latest_checkpoint(tmp_path / "run")))
    assert model.tokenizer is not None and model.cfg.positional == "rotary"


def _params(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_resume_is_bit_identical(token_dir, tmp_path):
    full = tmp_path / "full"
    train(_cfg(token_dir, full, repeat_prob=0.5))
    part = tmp_path / "part"
    s = train(_cfg(token_dir, part, repeat_prob=0.5, stop_after=5))
    assert s["step"] == 5 and s["stop_reason"] == "stop_after"
    s = train(_cfg(token_dir, part, repeat_prob=0.5))  # resumes from step 5
    assert s["step"] == 12
    a, b = _params(latest_checkpoint(full)), _params(latest_checkpoint(part))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa = load_file(str(latest_checkpoint(full) / "optimizer.safetensors"))
    ob = load_file(str(latest_checkpoint(part) / "optimizer.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    # the log of the resumed run continues the interrupted one
    steps = [r["step"] for r in json.loads((part / "log.json").read_text())]
    assert steps == sorted(steps) and steps[-1] == 12


def test_ctrl_c_saves_a_consistent_checkpoint_and_resumes_exactly(token_dir, tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(_cfg(token_dir, full, steps=8))
    run = tmp_path / "run"
    real_lr_at = trainer_mod.lr_at

    def lr_at_with_ctrl_c(step, cfg, *args):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 3
        return real_lr_at(step, cfg, *args)

    monkeypatch.setattr(trainer_mod, "lr_at", lr_at_with_ctrl_c)
    s = train(_cfg(token_dir, run, steps=8))
    assert s["stop_reason"] == "interrupted" and s["step"] == 4  # finished the step, saved, stopped
    assert not list((run / "checkpoints").glob(".tmp*"))
    monkeypatch.setattr(trainer_mod, "lr_at", real_lr_at)
    train(_cfg(token_dir, run, steps=8))
    a, b = _params(latest_checkpoint(full)), _params(latest_checkpoint(run))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_passes_decoder_options_and_exports(token_dir, tmp_path):
    out = tmp_path / "cli"
    rc = train_main(["fit", "--data", str(token_dir), "--out", str(out), "--steps", "3", "--batch-size", "2",
                     "--context-length", "16", "--warmup-steps", "1", "--eval-interval", "3", "--eval-batches", "1",
                     "--no-progress", "--threads", "1", "--d-model", "32", "--n-heads", "2", "--n-layers", "2",
                     "--norm-placement", "deepnorm", "--norm", "rmsnorm", "--act", "silu", "--gated",
                     "--n-kv-heads", "1"])
    assert rc == 0
    cfg = json.loads((latest_checkpoint(out) / "config.json").read_text())
    assert (cfg["norm_placement"], cfg["norm"], cfg["act"], cfg["gated"], cfg["n_kv_heads"]) == (
        "deepnorm", "rmsnorm", "silu", True, 1)
    assert cfg["n_ctx"] == 16 and cfg["d_vocab"] == 320 and cfg["eos_token_id"] == 0
    dest = export_model(latest_checkpoint(out), tmp_path / "exported", name="tiny")
    m1, m2 = interp.load(str(dest)), interp.load(str(latest_checkpoint(out)))
    tokens = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(m1(tokens), m2(tokens)) and m1.cfg.name == "tiny"


def test_resume_refuses_a_different_model(token_dir, tmp_path):
    train(_cfg(token_dir, tmp_path / "r", steps=2, warmup_steps=1, checkpoint_interval=2))
    bad = _cfg(token_dir, tmp_path / "r", steps=4, warmup_steps=1, model=dict(TINY_MODEL, d_model=64))
    with pytest.raises(InterpError, match="model config differs"):
        train(bad)


def test_init_from_continues_a_model_on_longer_windows(token_dir, tmp_path):
    """--init-from: the run starts from another model folder's weights (exactly), with n_ctx = the new
    context_length and the rest of its architecture; training from there starts far below a fresh model."""
    train(_cfg(token_dir, tmp_path / "short", steps=30, lr=1e-2, context_length=16, stride=8))
    short = export_model(latest_checkpoint(tmp_path / "short"), tmp_path / "short-model", name="short")
    cfg = _cfg(token_dir, tmp_path / "long", steps=3, context_length=64, stride=32, lr=1e-4, model={},
               init_from=str(short))
    model = trainer_mod.build_model(cfg, TokenData(token_dir))
    saved, cfg_short = load_file(str(short / "model.safetensors")), json.loads((short / "config.json").read_text())
    assert model.cfg.n_ctx == 64 and cfg_short["n_ctx"] == 16
    assert {k: v for k, v in model.cfg.to_dict().items() if k not in ("n_ctx", "name", "source")} == {
        k: v for k, v in cfg_short.items() if k not in ("n_ctx", "name", "source")}
    state = model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)

    rc = train_main(["fit", "--data", str(token_dir), "--out", str(tmp_path / "long"), "--init-from", str(short),
                     "--context-length", "64", "--steps", "3", "--batch-size", "2", "--lr", "1e-4",
                     "--warmup-steps", "1", "--eval-interval", "3", "--eval-batches", "1", "--log-interval", "1",
                     "--no-progress", "--threads", "1", "--name", "long"])
    assert rc == 0
    rows = json.loads((tmp_path / "long" / "log.json").read_text())
    assert rows[0]["train_loss"] < math.log(320) - 1.0  # a fresh model starts near log(320)
    long_model = interp.load(str(latest_checkpoint(tmp_path / "long")))
    assert long_model.cfg.n_ctx == 64 and long_model.cfg.name == "long"
    assert long_model(torch.randint(1, 320, (1, 64))).shape == (1, 64, 320)


def test_init_from_refuses_what_cannot_continue(token_dir, tmp_path):
    with pytest.raises(InterpError, match="init_from must be an interp model folder"):
        trainer_mod.build_model(_cfg(token_dir, tmp_path / "x", init_from=str(tmp_path)), TokenData(token_dir))
    # a learned position table of 16 rows cannot serve 32 positions: refused with the shapes
    train(_cfg(token_dir, tmp_path / "learned", steps=2, warmup_steps=1, context_length=16, stride=8,
               model=dict(TINY_MODEL, positional="learned")))
    learned = export_model(latest_checkpoint(tmp_path / "learned"), tmp_path / "learned-model")
    with pytest.raises(InterpError, match="W_pos.*shape"):
        trainer_mod.build_model(_cfg(token_dir, tmp_path / "y", model={}, init_from=str(learned)), TokenData(token_dir))
    # a model of another tokenizer: refused before training on ids that mean other things to it
    other = tmp_path / "other-tokens"
    prepare(FIXTURE, other, other / "tok-src.json", vocab_size=300, val_fraction=0.15, seed=0)
    from tokenizers import Tokenizer

    with pytest.raises(InterpError, match="tokenizer.json differs"):
        trainer_mod.build_model(_cfg(other, tmp_path / "z", model={}, init_from=str(learned)), TokenData(other),
                                Tokenizer.from_file(str(other / "tokenizer.json")))


def test_module_entry_point_reports_bad_input_in_one_line(tmp_path):
    # `python -m interp.train` (the recipes' command) answers bad input as `interp train` does: one line, exit 2
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "interp.train", "fit", "--data", str(tmp_path), "--out",
                           str(tmp_path / "run")], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp: error: ") and "meta.json" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
