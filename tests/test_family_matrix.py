"""The family matrix: every decoder-only architecture TransformerLens' bridge registers that `transformers` can
build offline opens in interp (native where a FAMILIES row exists, universal otherwise) with HF's logits.

Reference: the same tiny random HF model (tests/tiny_hf.py) with HF's eager attention. Exact means
|interp - HF| <= 1e-4 of max |logit|. The bridge itself is never booted here (for multimodal classes it
tries to pip install torchvision): only its registry of class names is read.
"""

from __future__ import annotations

import pytest
import torch
from tiny_hf import model_class, tiny_model

import interp
from interp.errors import InterpError

# Refused by both paths, with the reason (the test checks the refusal is one line naming the class).
REFUSED: dict[str, str] = {}
MIN_EXACT = 83  # the bridge's count on the 85


def _decoder_only(arch: str) -> bool:
    cls = model_class(arch)
    if cls is None or not arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return False
    if arch.startswith(("Bert", "Roberta")):  # encoders with an LM head, not causal decoders
        return False
    return not getattr(cls.config_class(), "is_encoder_decoder", False)


def _architectures() -> list[str]:
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return sorted(a for a in SUPPORTED_ARCHITECTURES if _decoder_only(a))


ARCHS = _architectures()
_results: dict[str, str] = {}


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_opens_with_hf_logits(arch):
    try:
        hf = tiny_model(arch)
        tokens = torch.randint(3, 60, (1, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = hf(input_ids=tokens).logits
    except Exception as err:  # noqa: BLE001
        _results[arch] = "skipped"
        pytest.skip(f"transformers cannot build {arch} offline from a tiny config: {type(err).__name__}: "
                    f"{str(err).splitlines()[0][:120] if str(err) else ''}")
    if arch in REFUSED:
        with pytest.raises(InterpError) as err:
            interp.load(hf)
        assert arch in str(err.value) and "\n" not in str(err.value) and "--families" in str(err.value)
        _results[arch] = "refused"
        return
    model = interp.load(hf)
    with torch.no_grad():
        got = model(tokens)
    torch.testing.assert_close(got.float(), ref.float(), rtol=0, atol=1e-4 * float(ref.abs().max()))
    _results[arch] = f"exact ({model.cfg.path if hasattr(model.cfg, 'path') else 'native'})"


def test_matrix_count():
    """At least the bridge's count opens exactly (run after the matrix; alone it checks the list sizes)."""
    assert len(ARCHS) >= 85
    if len(_results) == len(ARCHS):
        exact = [a for a, r in _results.items() if r.startswith("exact")]
        assert len(exact) >= MIN_EXACT, {a: r for a, r in _results.items() if not r.startswith("exact")}
