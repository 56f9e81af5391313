"""Hostile and careless inputs to the `interp` command and the Python API (issue 21).

Each case runs ``interp.cli.main([...])`` in-process (fast) under a time bound (SIGALRM: a hang fails the test
instead of stalling CI) and checks what a user sees: exit status 2, exactly one line on stderr naming the input,
no traceback, and no file the user had changed (contents and modification times are compared). Valid input that
used to be refused is checked to work. The scan cache gets a kill test: a crash between its two writes must never
make a later run return another scan's rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

import pytest
import torch

from interp.cli import main
from interp.errors import InterpError

SEQ = 32
CORPUS = ["the cat sat on the mat", "a dog ran in the park and sat down", "birds sing in the morning light",
          "the river flows past the old mill", "snow fell on the quiet town"]


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (TimeoutError) instead of hanging: SIGALRM interrupts even a blocking open() of a FIFO."""
    def expired(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: the command hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(*folders: Path) -> dict[str, tuple]:
    """Every entry below ``folders``: (kind, content hash, mtime) — enough to see any file changed or added."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
            elif stat.S_ISLNK(st.st_mode):
                out[str(p)] = ("link", os.readlink(p), None)
            else:
                out[str(p)] = (stat.S_IFMT(st.st_mode), None, None)
    return out


def run(args: list[str], capsys, seconds: float = 30) -> tuple[int, str, str]:
    capsys.readouterr()
    with deadline(seconds):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own refusals
            code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(args: list[str], capsys, needle: str, *folders: Path, seconds: float = 30) -> str:
    """Run ``args``; assert exit 2, one stderr line mentioning ``needle``, nothing in ``folders`` changed."""
    before = snapshot(*folders)
    code, _, err = run(args, capsys, seconds)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]
    assert snapshot(*folders) == before
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny checkpoint with a byte tokenizer (config.json + model.safetensors + tokenizer.json)."""
    from interp.loading import save_checkpoint
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder
    from interp.report.inputs import byte_tokenizer

    torch.manual_seed(0)
    model = HookedDecoder(DecoderConfig(d_vocab=256, n_ctx=SEQ, d_model=16, n_layers=2, n_heads=2, d_mlp=32,
                                        positional="rotary", name="hostile-tiny"))
    model.tokenizer = byte_tokenizer()
    return save_checkpoint(model, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "corpus.txt").write_text("\n\n".join(CORPUS), encoding="utf-8")
    return tmp_path


def broken_copy(tiny: Path, dest: Path, config: dict | None = None) -> Path:
    shutil.copytree(tiny, dest)
    if config is not None:
        cfg = json.loads((dest / "config.json").read_text())
        cfg.update(config)
        (dest / "config.json").write_text(json.dumps(cfg))
    return dest


# --- model folders ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["garbage{{", "", '{"version": "1.0", "model": 5}'],
                         ids=["garbage", "empty", "wrong-schema"])
def test_broken_tokenizer_json_is_one_line(tiny, work, capsys, content):
    m = broken_copy(tiny, work / "m")
    (m / "tokenizer.json").write_text(content)
    refused(["generate", "hi", "--model", m, "--max-new-tokens", "1"], capsys, "tokenizer.json", work)


@pytest.mark.parametrize("kind", ["folder", "symlink-loop", "fifo"])
def test_weights_that_are_not_a_file_are_one_line(tiny, work, capsys, kind):
    m = broken_copy(tiny, work / "m")
    w = m / "model.safetensors"
    w.unlink()
    if kind == "folder":
        w.mkdir()
    elif kind == "fifo":
        os.mkfifo(w)
    else:
        os.symlink("model.safetensors", w)
    refused(["generate", "hi", "--model", m, "--max-new-tokens", "1"], capsys, "model.safetensors", work)


@pytest.mark.parametrize("change", [{"d_model": 10**6}, {"d_vocab": 10**9}, {"positional": "sinusoidal", "n_ctx": 10**9},
                                    {"n_layers": 10**6}], ids=["d_model", "d_vocab", "sinusoidal-n_ctx", "n_layers"])
def test_memory_bomb_configs_are_refused_before_allocating(tiny, work, capsys, change):
    m = broken_copy(tiny, work / "m", change)
    line = refused(["generate", "hi", "--model", m, "--max-new-tokens", "1"], capsys, "config.json", work, seconds=20)
    assert "parameters" in line


@pytest.mark.parametrize("change", [{"d_model": 10**6, "d_head": None, "d_mlp": None}, {"n_layers": 10**9}],
                         ids=["d_model", "n_layers"])
def test_configs_larger_than_memory_are_refused_with_an_estimate(tiny, change):
    """Against free memory (the README's promise), whatever the weights file: the estimate is checked first."""
    from interp.loading.checkpoint import check_config_fits
    from interp.model.config import DecoderConfig

    cfg = DecoderConfig.from_dict({**json.loads((tiny / "config.json").read_text()), **change})
    with pytest.raises(InterpError, match=r"parameters in float32\) needs about .* GiB"):
        check_config_fits(cfg, "config.json")


def test_transformers_config_bomb_is_refused_before_the_config_is_built(work, capsys):
    """10^8 layers: transformers' config object alone would build per-layer lists for minutes."""
    (work / "hf").mkdir()
    (work / "hf" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 10**8, "num_attention_heads": 4, "vocab_size": 256}))
    line = refused(["generate", "hi", "--model", work / "hf"], capsys, "config.json", work, seconds=90)
    assert "parameters" in line


def test_parameter_estimate_matches_the_built_model():
    """The estimate that guards allocation, against the parameters a built model really holds."""
    from interp.loading.checkpoint import estimate_parameters
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    for extra in ({}, {"gated": True, "act": "silu", "norm": "rmsnorm", "n_kv_heads": 1, "tie_embeddings": True},
                  {"positional": "learned", "d_mlp": 40}, {"n_experts": 4, "n_experts_per_token": 2, "d_expert": 24}):
        cfg = DecoderConfig(d_vocab=300, n_ctx=64, d_model=32, n_layers=3, n_heads=4, **extra)
        with torch.device("meta"):
            model = HookedDecoder(cfg)
        real = sum(p.numel() for p in model.parameters())
        assert abs(estimate_parameters(cfg) - real) <= 0.05 * real, (extra, estimate_parameters(cfg), real)


# --- prompts and arguments --------------------------------------------------------------------------------------

def test_invalid_utf8_argument_is_one_line(tiny, work, capsys):
    bad = b"caf\xff".decode("utf-8", "surrogateescape")  # what Python makes of undecodable argv bytes
    refused(["generate", bad, "--model", tiny], capsys, "not valid UTF-8", work)


def test_prompt_with_a_lone_surrogate_is_refused_by_the_api(tiny):
    from interp.report.inputs import encode_prompt, load_model

    with pytest.raises(InterpError, match="prompt"):
        encode_prompt(load_model(str(tiny)), "caf\udcff")


@pytest.mark.parametrize("value", [str(2**70), "-1", "x"])
def test_out_of_range_seed_is_one_line(tiny, work, capsys, value):
    refused(["generate", "hi", "--model", tiny, "--seed", value], capsys, "--seed", work)


# --- corpora ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,needle", [('{"body": "a"}\n{"body": "b"}\n', "'text'"),
                                         ('{"text": 5}\n{"text": 6}\n', "holds int"),
                                         ('{"text": "a"}\n{oops\n', "rows.jsonl"),
                                         ('\x00\x01{"text": "a"}\n', "binary")],
                         ids=["missing", "number", "malformed", "binary"])
def test_jsonl_rows_without_text_are_one_line(tiny, work, capsys, rows, needle):
    (work / "rows.jsonl").write_text(rows)
    refused(["scan", "neurons", work / "rows.jsonl", "--out", work / "o", "--model", tiny, "--quiet"], capsys,
            needle, tiny, work)
    assert not (work / "o" / "meta.json").exists()


def _sae_train(tiny: Path, out: Path, *extra) -> list:
    return ["sae", "train", "--model", tiny, "--out", out, "--steps", "2", "--batch-size", "16", "--quiet", *extra]


@pytest.mark.parametrize("command", ["scan", "sae", "report"])
def test_binary_and_fifo_corpora_are_refused_everywhere_without_hanging(tiny, work, capsys, command):
    (work / "bin.txt").write_bytes(bytes(range(256)) * 8)
    os.mkfifo(work / "pipe.txt")
    for corpus, needle in ((work / "bin.txt", "binary"), (work / "pipe.txt", "FIFO")):
        args = {"scan": ["scan", "neurons", corpus, "--out", work / "o", "--model", tiny, "--quiet"],
                "sae": _sae_train(tiny, work / "o", "--corpus", corpus),
                "report": ["report", "hi", "--model", tiny, "--corpus", corpus, "--out", work / "r.html"]}[command]
        refused(args, capsys, needle, tiny, work, seconds=20)
        assert not (work / "o").exists() and not (work / "r.html").exists()


# --- outputs ----------------------------------------------------------------------------------------------------

def test_fifo_out_with_no_reader_is_refused_not_a_hang(tiny, work, capsys):
    os.mkfifo(work / "pipe")
    refused(["probe", "logit_lens", "hi", "--model", tiny, "--json", work / "pipe"], capsys, "no process is reading",
            tiny, work, seconds=60)


def test_fifo_out_with_a_reader_is_written_in_place(work):
    from interp.io import write_text

    os.mkfifo(work / "pipe")
    fd = os.open(work / "pipe", os.O_RDONLY | os.O_NONBLOCK)  # a reader: the write goes through it
    try:
        with deadline(10):
            write_text(work / "pipe", "hello\n")
        assert os.read(fd, 100) == b"hello\n"
    finally:
        os.close(fd)
    assert stat.S_ISFIFO(os.lstat(work / "pipe").st_mode)  # still the pipe, not replaced by a file


def test_regular_file_under_dev_shm_is_a_file_not_a_stream():
    """/dev/shm/x.html used to be appended to in place (exit 0, no --force); it is a file like any other, and a
    scan's checkpoint there is replaced atomically each time (the second one used to fail)."""
    from interp.io import atomic_path, is_stream, write_text

    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="interp-test-"))
    try:
        f = folder / "x.html"
        f.write_text("mine")
        assert not is_stream(f) and is_stream("/dev/null")
        with pytest.raises(InterpError, match="--force"):
            write_text(f, "new")
        assert f.read_text() == "mine"
        inode = f.stat().st_ino
        write_text(f, "new", force=True)
        assert f.read_text() == "new" and f.stat().st_ino != inode  # renamed over: atomic, not appended
        for step in range(3):  # a checkpoint saved again and again in the same place
            with atomic_path(folder / "ckpt.safetensors") as tmp:
                tmp.write_text(str(step))
        assert (folder / "ckpt.safetensors").read_text() == "2"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_overlong_file_names_are_one_line(tiny, work, capsys):
    name = "x" * 300
    refused(["report", "hi", "--model", tiny, "--out", work / f"{name}.html"], capsys, "too long", work)
    refused(["scan", "neurons", work / "corpus.txt", "--model", tiny, "--out", work / name, "--quiet"], capsys,
            "too long", work)


@pytest.mark.parametrize("command", ["scan", "sae"])
def test_out_that_is_an_existing_file_is_refused_before_any_work(tiny, work, capsys, command, monkeypatch):
    (work / "keep.txt").write_text("a user's file")
    import interp.report.inputs

    def no_model(*a, **k):  # proves the refusal comes before the model is loaded
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(interp.report.inputs, "load_model", no_model)
    args = (["scan", "neurons", work / "corpus.txt", "--model", tiny, "--out", work / "keep.txt", "--quiet"]
            if command == "scan" else _sae_train(tiny, work / "keep.txt", "--corpus", work / "corpus.txt"))
    refused(args, capsys, "keep.txt", work, seconds=10)


def test_api_output_folders_that_are_files_are_refused_before_any_work(tiny_model, tmp_path, monkeypatch):
    import interp.data.scan
    from interp.analysis.neurons import scan_top_contexts
    from interp.analysis.sae import train_sae

    (tmp_path / "f").write_text("a user's file")
    monkeypatch.setattr(interp.data.scan, "run_scan", lambda *a, **k: pytest.fail("scanned before the check"))
    with pytest.raises(InterpError, match="cache_path"):
        scan_top_contexts(tiny_model, CORPUS, k=2, cache_path=tmp_path / "f", progress=False)
    with pytest.raises(InterpError, match="checkpoint_dir"):
        train_sae(torch.randn(64, 4), 8, "topk", k=2, steps=2, checkpoint_dir=tmp_path / "f", progress=False)
    assert (tmp_path / "f").read_text() == "a user's file"


def test_sae_k_above_d_sae_is_refused_before_the_model_loads(tiny, work, capsys, monkeypatch):
    import interp.report.inputs

    monkeypatch.setattr(interp.report.inputs, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    refused(_sae_train(tiny, work / "s", "--d-sae", "8", "--k", "9", "--corpus", work / "corpus.txt"), capsys,
            "--k", work, seconds=10)


def test_damaged_sae_trainer_state_is_one_line(tmp_path):
    from interp.analysis.sae import train_sae

    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    opts = {"k": 2, "steps": 4, "batch_size": 32, "checkpoint_dir": tmp_path / "s", "progress": False}
    train_sae(x, 16, "topk", **opts)
    state = tmp_path / "s" / "trainer_state.safetensors"
    good = state.read_bytes()
    state.write_bytes(good[:50])  # truncated
    with pytest.raises(InterpError, match="trainer_state"):
        train_sae(x, 16, "topk", **{**opts, "steps": 8})
    state.write_bytes(good)
    (tmp_path / "s" / "trainer_state.json").write_text("{not json")
    with pytest.raises(InterpError, match="trainer_state.json"):
        train_sae(x, 16, "topk", **{**opts, "steps": 8})
    sae = train_sae(x, 16, "topk", **{**opts, "steps": 8, "overwrite": True})  # --force: starts over
    assert len(sae.history) >= 1


def test_sae_cfg_bomb_and_damaged_weights_are_one_line(tmp_path):
    from interp.analysis.sae import SAE, SAEConfig, load_sae, save_sae

    folder = save_sae(SAE(SAEConfig(d_in=4, d_sae=8, architecture="relu")), tmp_path / "s")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 10**9}))  # terabytes if it were built
    with deadline(20), pytest.raises(InterpError, match="do not belong together"):
        load_sae(folder)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    (folder / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(InterpError, match="sae_weights.safetensors"):
        load_sae(folder)


def test_damaged_sae_trainer_state_via_the_cli(tiny, work, capsys):
    (work / "s").mkdir()
    (work / "s" / "trainer_state.json").write_text("[1, 2")
    refused(_sae_train(tiny, work / "s", "--corpus", work / "corpus.txt", "--eval-fraction", "0"), capsys,
            "trainer_state", work, seconds=60)


# --- valid input accepted ----------------------------------------------------------------------------------------

def test_scan_layers_zero_and_minus_one_and_a_huge_window(tiny, work, capsys):
    import pandas as pd

    for flag, layer in (("0", 0), ("-1", 1)):
        out = work / f"n{layer}"
        code, _, err = run(["scan", "neurons", work / "corpus.txt", "--model", tiny, "--out", out, "--k", "2",
                            "--layers", flag, "--window", "1000000000", "--quiet"], capsys, seconds=60)
        assert code == 0, err
        assert "--window" in err  # capped, and said so
        df = pd.read_parquet(out / "top_contexts.parquet")
        assert set(df["layer"]) == {layer}
        assert df.groupby("neuron").size().eq(2).all()


# --- the scan cache: one commit, never another scan's rows --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tiny):
    from interp.report.inputs import load_model

    return load_model(str(tiny))


def _rows_per_neuron(df) -> set[int]:
    return set(df.groupby(["layer", "neuron"]).size())


def test_scan_cache_crash_between_data_and_meta_never_returns_another_scans_rows(tiny_model, tmp_path, monkeypatch):
    from interp.analysis import neurons
    from interp.analysis.neurons import scan_top_contexts

    folder = tmp_path / "scan"
    kw = {"cache_path": folder, "progress": False, "window": 3}
    fresh = {k: scan_top_contexts(tiny_model, CORPUS, k=k, window=3, progress=False) for k in (2, 5)}
    first = scan_top_contexts(tiny_model, CORPUS, k=2, **kw)
    assert _rows_per_neuron(first) == {2}

    real_write = neurons.atomic_write_text

    def crash_on_meta(path, text, *a, **k):
        if Path(path).name == "meta.json":
            raise KeyboardInterrupt  # killed between the data file's rename and meta.json's
        return real_write(path, text, *a, **k)

    monkeypatch.setattr(neurons, "atomic_write_text", crash_on_meta)
    with pytest.raises(KeyboardInterrupt):
        scan_top_contexts(tiny_model, CORPUS, k=5, **kw)
    monkeypatch.setattr(neurons, "atomic_write_text", real_write)

    again2 = scan_top_contexts(tiny_model, CORPUS, k=2, **kw)  # the first scan's question, asked again
    assert _rows_per_neuron(again2) == {2}
    pd_testing_equal(again2, fresh[2])
    again5 = scan_top_contexts(tiny_model, CORPUS, k=5, **kw)
    assert _rows_per_neuron(again5) == {5}
    pd_testing_equal(again5, fresh[5])


def test_scan_cache_with_a_data_file_from_another_scan_recomputes(tiny_model, tmp_path):
    from interp.analysis.neurons import scan_top_contexts

    a = scan_top_contexts(tiny_model, CORPUS, k=2, cache_path=tmp_path / "a", progress=False)
    scan_top_contexts(tiny_model, CORPUS, k=5, cache_path=tmp_path / "b", progress=False)
    shutil.copy(tmp_path / "b" / "top_contexts.parquet", tmp_path / "a" / "top_contexts.parquet")  # a stale pair
    got = scan_top_contexts(tiny_model, CORPUS, k=2, cache_path=tmp_path / "a", progress=False)
    assert _rows_per_neuron(got) == {2}
    pd_testing_equal(got, a)


def test_scan_force_recomputes(tiny, work, capsys, monkeypatch):
    import interp.data.scan

    calls = []
    real = interp.data.scan.run_scan
    monkeypatch.setattr(interp.data.scan, "run_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = ["scan", "neurons", work / "corpus.txt", "--model", tiny, "--out", work / "n", "--k", "2", "--quiet"]
    assert run(args, capsys, 60)[0] == 0 and len(calls) == 1
    refused(args, capsys, "--force", work)  # a finished scan is not replaced unasked
    assert run([*args, "--force"], capsys, 60)[0] == 0 and len(calls) == 2  # scanned again, not loaded


def pd_testing_equal(a, b) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=False,
                                  rtol=1e-5, atol=1e-6)
