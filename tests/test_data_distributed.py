"""Sharded scans on torch.distributed: two gloo processes on the CPU must give the one-process result.

One module-scoped fixture spawns the two ranks once (torch.multiprocessing, a file:// rendezvous in
pytest's tmp_path, a timeout) and runs every sharded computation there; each test compares one of them
with the same call in this (single) process: the top-k neuron scan, probe activation collection,
running statistics, the activation dataset, tuned-lens fitting, and a run that both ranks abandon
after their first shard and then resume. The corpus has 13 documents of very different lengths in shards of
2 documents, so the shards hold uneven numbers of tokens and the ranks uneven numbers of shards (4 and 3).
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import FAMILY_CONFIGS, torch_threads, word_level_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
WORLD = 2
TIMEOUT_S = 240
VOCAB = 40
LENGTHS = [3, 30, 7, 1, 19, 12, 40, 5, 9, 2, 26, 11, 6]  # uneven documents (n_ctx = 16: some need 3+ windows)
SCAN = {"k": 3, "window": 3, "batch_size": 2, "shard_docs": 2, "seq_len": 12, "overlap": 4, "progress": False}


def make_model():
    from interp.model.config import DecoderConfig
    from interp.model.transformer import HookedDecoder

    torch.manual_seed(0)
    cfg = DecoderConfig(d_vocab=VOCAB, n_ctx=16, d_model=16, n_layers=2, n_heads=2, d_mlp=24, init_std=0.3,
                        **FAMILY_CONFIGS["llama"])
    return HookedDecoder(cfg, tokenizer=word_level_tokenizer(VOCAB)).eval()


def corpus_docs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(2, VOCAB, (n,), generator=g) for n in LENGTHS]


def prompts() -> list[str]:
    g = torch.Generator().manual_seed(2)
    return [" ".join(f"t{int(t)}" for t in torch.randint(2, VOCAB, (n,), generator=g)) for n in (3, 5, 3, 8, 5, 2, 7)]


def lens_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(2, VOCAB, (3, 10), generator=g) for _ in range(2)]


def compute(out: Path, crash_after_first_shard: bool = False) -> dict:
    """Everything the tests compare, as this process (rank) sees it."""
    import interp.data.scan as scan_mod
    from interp.analysis.neurons import scan_top_contexts
    from interp.analysis.probing import collect_activations
    from interp.analysis.tuned_lens import train_tuned_lens
    from interp.data import activation_stats, write_activation_dataset

    model, docs = make_model(), corpus_docs()
    forwards = []  # batch sizes of every forward pass a scan makes in this process
    real_forward, real_save = scan_mod.forward_cache, scan_mod._save_checkpoint

    def counting_forward(model, tokens, names):
        forwards.append(tokens.shape[0])
        return real_forward(model, tokens, names)

    def crash_after_save(*a, **k):
        real_save(*a, **k)
        raise RuntimeError("simulated crash")

    scan_mod.forward_cache = counting_forward
    try:
        res = {"scan": scan_top_contexts(model, docs, **SCAN)}
        res["full_forwards"] = len(forwards)
        # an interrupted scan: each rank stops after its first completed shard, then the scan is run again
        scan_mod._save_checkpoint = crash_after_save
        try:
            scan_top_contexts(model, docs, cache_path=out / "resume", **SCAN)
        except RuntimeError as e:
            assert "simulated crash" in str(e)
        scan_mod._save_checkpoint = real_save
        before = len(forwards)
        res["resumed"] = scan_top_contexts(model, docs, cache_path=out / "resume", **SCAN)
        res["resumed_forwards"] = (before - res["full_forwards"], len(forwards) - before)
    finally:
        scan_mod.forward_cache, scan_mod._save_checkpoint = real_forward, real_save
    res["probe"] = collect_activations(model, prompts(), ["resid_post", "mlp.hook_post"], positions="all",
                                       batch_size=1)
    res["stats"] = activation_stats(model, docs, ["mlp.hook_post", "hook_embed"], seq_len=12, overlap=4,
                                    batch_size=2, shard_docs=2, progress=False)
    ds = write_activation_dataset(model, docs, ["blocks.1.hook_resid_post"], out / "acts", seq_len=12, overlap=4,
                                  batch_size=2, shard_docs=2, progress=False)
    res["acts"] = (ds.activations("blocks.1.hook_resid_post"), ds.index(), ds.manifest["corpus"])
    lens = train_tuned_lens(model, lens_batches() if dist.is_initialized() else [torch.cat(lens_batches())],
                            steps=3, lr=1e-2, progress=False)
    res["lens"] = {k: v.detach().clone() for k, v in lens.state_dict().items()}
    return res


def _worker(rank: int, world: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world,
                            timeout=__import__("datetime").timedelta(seconds=TIMEOUT_S))
    try:
        res = compute(Path(root) / "shared")
        with open(Path(root) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(res, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(_worker, args=(WORLD, str(root)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {WORLD} gloo processes did not finish within {TIMEOUT_S} s")
    out = []
    for r in range(WORLD):
        with open(root / f"rank{r}.pkl", "rb") as f:
            out.append(pickle.load(f))
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    assert not dist.is_initialized()
    with torch_threads(1):  # as the ranks run (and tiny matmuls on a shared CPU are slower with more)
        return compute(tmp_path_factory.mktemp("single"))


def test_topk_scan_two_ranks_equal_one(sharded, single):
    for res in sharded:  # every rank returns the merged result
        pd.testing.assert_frame_equal(res["scan"], single["scan"], check_exact=False, rtol=1e-6, atol=1e-7)
    df = single["scan"]
    assert len(df) == 2 * 24 * 3 and df.doc.nunique() > 3
    # the result is right, not just consistent: each reported activation is the model's at that position
    model, docs = make_model(), corpus_docs()
    for _, row in df.sample(20, random_state=0).iterrows():
        d = docs[row.doc]
        start = 0 if row.position < 12 else row.position - 4 - (row.position - 12) % 8  # the scoring window
        _, cache = model.run_with_cache(d[start:start + 12][None])
        act = cache[f"blocks.{row.layer}.mlp.hook_post"][0, row.position - start, row.neuron]
        torch.testing.assert_close(float(act), row.activation, rtol=1e-5, atol=1e-6)
        assert row.token_id == d[row.position]


def test_probe_collection_two_ranks_equal_one(sharded, single):
    for res in sharded:
        pd.testing.assert_frame_equal(res["probe"].index, single["probe"].index)
        for hook, x in single["probe"].acts.items():
            torch.testing.assert_close(res["probe"].acts[hook], x, rtol=1e-5, atol=1e-6)
    assert len(single["probe"]) == 3 + 5 + 3 + 8 + 5 + 2 + 7


def test_running_stats_two_ranks_equal_one_and_match_numpy(sharded, single):
    for res in sharded:
        pd.testing.assert_frame_equal(res["stats"], single["stats"], check_exact=False, rtol=1e-9, atol=1e-12)
    # reference: every token of every document once (hook_embed is the embedding row of the token)
    model, docs = make_model(), corpus_docs()
    W_E = model.W_E.detach().double().numpy()
    rows = W_E[torch.cat(docs).numpy()]
    emb = single["stats"][single["stats"].hook == "hook_embed"]
    assert (emb["count"] == sum(LENGTHS)).all()
    np.testing.assert_allclose(emb["mean"], rows.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(emb["std"], rows.std(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(emb["max"], rows.max(0), rtol=1e-6)
    np.testing.assert_allclose(emb["frac_positive"], (rows > 0).mean(0))


def test_activation_dataset_two_ranks_equal_one(sharded, single):
    x1, idx1, corpus1 = single["acts"]
    for res in sharded:
        x2, idx2, corpus2 = res["acts"]
        pd.testing.assert_frame_equal(idx2, idx1)
        torch.testing.assert_close(x2, x1, rtol=1e-6, atol=1e-7)
        assert corpus2 == corpus1
    assert len(idx1) == sum(LENGTHS) and not idx1.duplicated().any()


def test_tuned_lens_data_parallel_equals_the_concatenated_batch(sharded, single):
    for res in sharded:
        for k, v in single["lens"].items():
            torch.testing.assert_close(res["lens"][k], v, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(v, torch.eye(16)) for k, v in single["lens"].items() if k.endswith("weight"))


def test_interrupted_scan_resumes_and_equals_uninterrupted(sharded, single):
    for res in [single, *sharded]:
        pd.testing.assert_frame_equal(res["resumed"], single["scan"], check_exact=False, rtol=1e-6, atol=1e-7)
        crashed, resumed = res["resumed_forwards"]
        # the first run stopped after one shard; the second did only what was left
        assert 0 < crashed and 0 < resumed < res["full_forwards"]
        assert crashed + resumed == res["full_forwards"]
    assert sum(r["full_forwards"] for r in sharded) == single["full_forwards"]


def test_checkpoint_of_another_scan_is_not_reused(tmp_path):
    from interp.analysis.neurons import scan_top_contexts

    model, docs = make_model(), corpus_docs()
    folder = tmp_path / "scan"
    import interp.data.scan as scan_mod

    real = scan_mod._save_checkpoint

    def crash(*a, **k):
        real(*a, **k)
        raise RuntimeError("simulated crash")

    scan_mod._save_checkpoint = crash
    try:
        with pytest.raises(RuntimeError):
            scan_top_contexts(model, docs[:6], cache_path=folder, **SCAN)
    finally:
        scan_mod._save_checkpoint = real
    assert list((folder / "partial").iterdir())
    # another corpus in the same folder: the partial state must not leak into it
    got = scan_top_contexts(model, docs[6:], cache_path=folder, **SCAN)
    ref = scan_top_contexts(model, docs[6:], **SCAN)
    pd.testing.assert_frame_equal(got, ref)
    assert not (folder / "partial").exists()
    assert os.listdir(folder)
