"""The shipped default model: it loads, its card's numbers are true, and it generates text.

Every number is recomputed here from the files in the model folder with plain torch / tokenizers,
not with the code that wrote the card.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

import interp
from interp.generate import generate
from interp.loading import ZOO, default_model_name

NAME = "docs-bible-austen-2l"
FOLDER = ZOO / NAME

pytestmark = pytest.mark.skipif(not (FOLDER / "model.safetensors").is_file(), reason=f"{FOLDER} not shipped yet")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return interp.load(NAME).eval()


@pytest.fixture(scope="module")
def recipe():
    return json.loads((FOLDER / "recipe.json").read_text())


def test_folder_is_complete_and_small():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "recipe.json", "recipe.md",
                 "heldout.txt"):
        assert (FOLDER / name).is_file(), name
    assert (FOLDER / "model.safetensors").stat().st_size <= 20 * 2**20
    assert (FOLDER / "heldout.txt").stat().st_size <= 400 * 1024


def test_loads_by_name_and_as_default(model):
    assert default_model_name() == NAME
    assert interp.load().cfg.name == model.cfg.name == NAME
    assert model.tokenizer is not None and model.cfg.eos_token_id == model.tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_heldout_loss_matches_the_card(model, recipe):
    card = (FOLDER / "README.md").read_text()
    m = re.search(r"Loss on it.*?\*\*([0-9.]+) nats\*\*", card, re.DOTALL)
    assert m, "card states no held-out loss"
    claimed = float(m.group(1))
    assert abs(claimed - recipe["heldout"]["loss_nats"]) < 1e-3
    # independent recomputation: raw tokenizer, non-overlapping windows, float64 cross-entropy
    tok = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    ids = torch.tensor(tok.encode((FOLDER / "heldout.txt").read_text(encoding="utf-8"), add_special_tokens=False).ids)
    n = model.cfg.n_ctx
    n_windows = (len(ids) - 1) // n
    assert n_windows >= 20
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, n_windows, 16):
            rows = torch.stack([ids[i * n: i * n + n + 1] for i in range(lo, min(n_windows, lo + 16))])
            logits = model(rows[:, :-1]).double()
            total += float(F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum"))
            count += rows[:, 1:].numel()
    assert abs(total / count - claimed) < 0.05
    assert total / count < math.log(model.cfg.d_vocab) - 3  # far better than uniform guessing


def test_greedy_generation_produces_text_and_matches_argmax(model):
    prompt = model.to_tokens("In the beginning God created")
    out = generate(model, prompt, max_new_tokens=12, temperature=0)
    new = out[0, prompt.shape[1]:]
    text = model.to_string(new)
    assert len(new) == 12 and re.search(r"[A-Za-z]{2,}", text)
    # independent greedy decoding: full forward pass, argmax, append
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(seq, out)


def test_induction_claims_hold(model, recipe):
    facts = recipe["facts"]
    rr = facts["repeated_random"]
    # our own repeated random sequence: EOS, then 100 random non-EOS tokens twice
    g = torch.Generator().manual_seed(1234)
    eos = model.cfg.eos_token_id
    half = torch.randint(1, model.cfg.d_vocab, (8, rr["seq_len"]), generator=g)
    half[half == eos] = 1
    toks = torch.cat([torch.full((8, 1), eos), half, half], dim=1)
    best = facts["best"]["induction"]
    name = f"blocks.{best['layer']}.attn.hook_pattern"
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks, names_filter=name)
    nll = -torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, toks[:, 1:, None]).squeeze(-1)
    L = rr["seq_len"]
    first, second = float(nll[:, 1:L].mean()), float(nll[:, L + 1:].mean())  # skip each copy's first token
    assert second < first - 1.0, (first, second)
    assert abs(first - rr["loss_first_copy"]) < 0.3 and abs(second - rr["loss_second_copy"]) < 0.3
    # the card's best induction head attends from each second-copy token to the token after its
    # first occurrence: query q = 1 + L + i looks at key 1 + i + 1
    pat = cache[name][:, best["head"]]
    q = torch.arange(L + 1, 2 * L + 1)
    k = q - L + 1
    score = float(pat[:, q[:-1], k[:-1]].mean())
    assert abs(score - best["score"]) < 0.1, (score, best["score"])
