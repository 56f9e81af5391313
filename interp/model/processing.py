"""TransformerLens' weight processing, with its names and its meaning.

TransformerLens rewrites a model's weights at load time so that the residual stream decomposes cleanly.
The four steps here do what ``HookedTransformer.process_weights`` / the bridge's
``enable_compatibility_mode()`` do, and leave every log-probability unchanged:

* ``fold_ln`` — a pre-norm's gain ``w`` and bias ``b`` are affine maps applied right before a linear read,
  so they fold into it: ``W ← diag(w)·W``, ``b_read ← b_read + b·W``. The norms become TL's weightless
  ``LNPre`` / ``RMSPre`` (``cfg.normalization_type`` says so: TL's ``ActivationCache`` reads it). For
  LayerNorm the reading weights are also centred over ``d_model`` (the normalised input has zero mean, so
  this changes nothing but makes the weights canonical).
* ``center_writing_weights`` — every matrix writing to the residual stream (W_E, W_pos, W_O, W_out and
  their biases) has its mean over ``d_model`` removed. Exact only because every reader is a LayerNorm,
  which removes the mean anyway; TL skips it for RMSNorm models, and so do we.
* ``center_unembed`` — ``W_U``/``b_U`` lose their mean over the vocabulary: logits shift by a constant per
  position, log-probabilities do not move.
* ``fold_value_biases`` — a value bias ``b_V`` reaches the output as ``b_V·W_O`` whatever the pattern is
  (pattern rows sum to 1), so it moves into ``b_O`` and ``b_V`` becomes 0.
* ``refactor_factored_attn_matrices`` — a head's behaviour is fixed by W_QK = W_Q·W_Kᵀ and W_OV = W_V·W_O
  alone; any factorisation of them computes the same scores and outputs. This one is canonical (TL's): with
  [W_Q; b_Q] and [W_K; b_K] (a d_model+1 input whose last coordinate is 1) and W_QK = U S Vᵀ, W_Q = U√S and
  W_K = V√S (orthogonal columns, equal norms); with W_OV = U S Vᵀ, W_V = U S and W_O = Vᵀ (a rotation, so z
  has the norm of the head's output), b_V folded into b_O first. Scores, patterns and outputs are unchanged;
  q, k, v and z are the new factors'. Not defined where the scores are not that bilinear form (rotary
  positions, QK-norm, clip_qkv) or where one W_K serves several query heads (GQA/MQA): refused there.

Why TL's cache methods need it: ``ActivationCache.apply_ln_to_stack`` (behind ``decompose_resid(apply_ln=
True)``, ``accumulated_resid(apply_ln=True)`` and ``logit_attrs``) divides each component by the cached
norm scale and stops there; ``logit_attrs`` then dots with ``W_U``. That is the model's logit only when the
final norm's gain is already inside ``W_U`` — i.e. after ``fold_ln``. On an unprocessed model these methods
warn once (:func:`warn_if_unfolded`).

Default: ``interp.load`` processes nothing unless asked (``fold_ln=True`` etc.), unlike TransformerLens.
An interp model's weights and hooks are then exactly those of the `transformers` model it came from
(what the family tests check), and a checkpoint's weights are what was trained; the warning points at
the switch when a TL method needs it.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformer_lens.ActivationCache import ActivationCache

from interp.errors import InterpError

STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices")


def _param(module: nn.Module, name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    """Store ``value`` as parameter ``name`` of ``module`` in ``like``'s dtype/device (created if absent)."""
    setattr(module, name, nn.Parameter(value.to(dtype=like.dtype, device=like.device), requires_grad=like.requires_grad))


def _work(t: torch.Tensor) -> torch.Tensor:
    """Arithmetic in at least fp32 (a bf16 model is folded in fp32 and rounded once)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _check_foldable(model) -> None:
    cfg = model.cfg
    if cfg.norm_placement not in ("pre", "sandwich"):
        raise InterpError(
            f"fold_ln needs norms that read the residual stream before a sublayer (norm_placement 'pre' or "
            f"'sandwich'); this model has norm_placement={cfg.norm_placement!r}, whose norms act on the residual "
            "stream or on a sublayer's output and cannot fold into a read."
        )
    if not cfg.final_norm:
        raise InterpError("fold_ln needs a final norm (cfg.final_norm=True); this model has none to fold.")
    if cfg.kv_lora_rank is not None:
        raise InterpError("fold_ln with multi-head latent attention (DeepSeek V3) is not supported: ln1 is read by its "
                          "latent projections, not by per-head W_Q/W_K/W_V.")
    if cfg.has_moe and cfg.norm == "layernorm":
        raise InterpError("fold_ln of a LayerNorm into a mixture of experts is not supported (the router and "
                          "experts have no biases to take the norm's bias); RMSNorm MoE models fold.")


def _untie(model) -> None:
    """Give the unembedding its own matrix before processing changes W_U or W_E independently."""
    if model.unembed.W_U_param is None:
        W_E = model.embed.W_E
        model.unembed.W_U_param = nn.Parameter(W_E.detach().T.clone(), requires_grad=W_E.requires_grad)
        model.cfg.tie_embeddings = False


def _fold_norm_into(norm: nn.Module, reads: list[tuple[nn.Module, str, str | None, int]], center: bool) -> None:
    """Fold ``norm``'s gain/bias into each (module, weight name, bias name, d_model axis) that reads it."""
    if norm.w is None:  # already folded, or parameter-free (OLMo): nothing to move
        return
    w, b = norm.gain(torch.float32), None if norm.b is None else _work(norm.b)  # gain: offset + w (Gemma)
    w = w.to(torch.promote_types(norm.w.dtype, torch.float32))
    for module, W_name, b_name, axis in reads:
        W = getattr(module, W_name)
        Wf = _work(W)
        shape = [1] * Wf.ndim
        shape[axis] = -1
        if b_name is not None:  # b·W: [heads, d_head] for attention, [d_mlp] / [d_vocab]
            bias = getattr(module, b_name)
            added = torch.zeros_like(Wf.sum(axis)) if b is None else (Wf * b.view(shape)).sum(axis)
            _param(module, b_name, added if bias is None else _work(bias) + added, W)
        Wf = Wf * w.view(shape)
        if center:
            Wf = Wf - Wf.mean(axis, keepdim=True)
        _param(module, W_name, Wf, W)
    norm.w = None
    norm.b = None


def _mlp_reads(mlp: nn.Module, with_bias: bool) -> list:
    """Every matrix reading the MLP's input: W_in (+ W_gate), or a MoE's router, experts and shared expert."""
    if hasattr(mlp, "W_router"):  # RMSNorm only (checked): no biases to create
        reads = [(mlp, "W_router", None, 0)]
        experts = list(mlp.experts) + ([mlp.shared_expert] if mlp.shared_expert is not None else [])
        if getattr(mlp, "W_shared_gate", None) is not None:
            reads.append((mlp, "W_shared_gate", None, 0))
        return reads + [r for e in experts for r in _mlp_reads(e, False)]
    reads = [(mlp, "W_in", "b_in" if with_bias else None, 0)]
    if mlp.W_gate is not None:
        reads.append((mlp, "W_gate", "b_gate" if with_bias else None, 0))
    return reads


def _fold_ln(model) -> None:
    _check_foldable(model)
    cfg = model.cfg
    layernorm = cfg.norm == "layernorm"  # TL centres reading weights for LayerNorm only; RMSNorm has no bias
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        if layernorm:
            cfg.attn_bias = True  # ln1's bias becomes b_Q/b_K/b_V
            cfg.mlp_bias = True  # ln2's bias becomes b_in (and b_gate); the config then has b_out too
            if mlp.b_out is None:
                _param(mlp, "b_out", torch.zeros(cfg.d_model), mlp.W_out)
        attn_reads = [(attn, f"W_{n}", f"b_{n}" if layernorm else None, 1) for n in "QKV"]
        if cfg.shared_norm:  # one norm feeds both sublayers (GPT-J, Phi, Falcon-7B, Cohere)
            _fold_norm_into(block.ln1, attn_reads + _mlp_reads(mlp, layernorm), layernorm)
        else:
            _fold_norm_into(block.ln1, attn_reads, layernorm)
            _fold_norm_into(block.ln2, _mlp_reads(mlp, layernorm), layernorm)
    _untie(model)
    if cfg.logit_scale != 1.0:  # Cohere / Granite: a scale on the logits is a scale of W_U and b_U
        for name in ("W_U_param", "b_U"):
            t = getattr(model.unembed, name)
            _param(model.unembed, name, _work(t) * cfg.logit_scale, t)
        cfg.logit_scale = 1.0
    _fold_norm_into(model.ln_final, [(model.unembed, "W_U_param", "b_U", 0)], layernorm)


@torch.no_grad()
def _center_writing_weights(model) -> bool:
    cfg = model.cfg
    if cfg.norm != "layernorm" or cfg.norm_placement != "pre":
        warnings.warn(
            "center_writing_weights skipped: it is exact only when every reader of the residual stream is a "
            f"pre-LayerNorm (this model: norm={cfg.norm!r}, norm_placement={cfg.norm_placement!r}). "
            "TransformerLens skips it too.", stacklevel=3,
        )
        return False

    def center(module, name):
        t = getattr(module, name)
        if t is not None:
            _param(module, name, _work(t) - _work(t).mean(-1, keepdim=True), t)

    _untie(model)
    center(model.embed, "W_E")
    if cfg.positional == "learned":  # a sinusoidal table is a fixed buffer; LN removes its mean anyway
        center(model.pos_embed, "W_pos")
    for block in model.blocks:
        for name in ("W_O", "b_O"):
            center(block.attn, name)
        for name in ("W_out", "b_out"):
            center(block.mlp, name)
    return True


@torch.no_grad()
def _center_unembed(model) -> bool:
    if model.cfg.final_softcap is not None:
        warnings.warn(
            "center_unembed skipped: a final logit soft-cap (Gemma 2's final_softcap) is not invariant to adding "
            "a constant to the logits, so centring W_U would change the probabilities. TransformerLens skips it too.",
            stacklevel=3,
        )
        return False
    _untie(model)
    W_U, b_U = model.unembed.W_U_param, model.unembed.b_U
    _param(model.unembed, "W_U_param", _work(W_U) - _work(W_U).mean(-1, keepdim=True), W_U)
    _param(model.unembed, "b_U", _work(b_U) - _work(b_U).mean(), b_U)


@torch.no_grad()
def _fold_value_biases(model) -> bool:
    cfg = model.cfg
    if cfg.attn_sinks:
        warnings.warn(
            "fold_value_biases skipped: with attention sinks (GPT-OSS) a pattern row sums to less than 1, so b_V "
            "reaches the output scaled by that sum and cannot move into b_O.", stacklevel=3,
        )
        return False
    for block in model.blocks:
        attn = block.attn
        if attn.b_V is None:
            continue
        b_V = _work(attn.b_V).repeat_interleave(attn.group, dim=0)  # [n_heads, d_head]: GQA heads share b_V
        added = torch.einsum("hd,hdm->m", b_V, _work(attn.W_O))
        _param(attn, "b_O", added if attn.b_O is None else _work(attn.b_O) + added, attn.W_O)
        _param(attn, "b_V", torch.zeros_like(attn.b_V), attn.b_V)
        cfg.attn_out_bias = True


def _check_refactorable(model) -> None:
    cfg = model.cfg
    reasons = {
        "rotary positions (q·k then depends on the positions, not on W_Q·W_Kᵀ alone; TransformerLens refuses it "
        "too)": any(cfg.uses_rope(layer) for layer in range(cfg.n_layers)),
        f"QK-norm (qk_norm={cfg.qk_norm!r}: a norm between the projections and the scores)": cfg.qk_norm is not None,
        f"clip_qkv={cfg.clip_qkv} (a clamp between the projections and the scores)": cfg.clip_qkv is not None,
        "position-dependent query scaling (query_scale_beta)": cfg.query_scale_beta is not None,
        "attention sinks (b_V cannot fold into b_O first)": cfg.attn_sinks,
        f"grouped keys (n_kv_heads={cfg.n_kv_heads} < n_heads={cfg.n_heads}: one W_K serves several query heads, "
        "each with its own W_QK)": cfg.n_kv_heads != cfg.n_heads,
    }
    found = [why for why, on in reasons.items() if on]
    if found:
        raise InterpError(f"refactor_factored_attn_matrices=True is not exact for this model: it has {found[0]}; "
                          "pass refactor_factored_attn_matrices=False.")


def _refactor_factored_attn_matrices(model) -> None:
    from transformer_lens.FactoredMatrix import FactoredMatrix

    # process_weights has run _check_refactorable before any step touched the weights
    _fold_value_biases(model)  # b_V -> b_O: afterwards the OV circuit is W_V·W_O alone
    for block in model.blocks:
        attn = block.attn
        like = attn.W_Q
        W_Q, W_K, W_V, W_O = (t.detach().double() for t in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O))
        zeros = torch.zeros(W_Q.shape[0], W_Q.shape[2], dtype=torch.float64, device=W_Q.device)
        b_Q = zeros if attn.b_Q is None else attn.b_Q.detach().double()
        b_K = zeros if attn.b_K is None else attn.b_K.detach().double()
        # the scores are the bilinear form of [x, 1] and [y, 1] under [W_Q; b_Q]·[W_K; b_K]ᵀ
        q_eff = torch.cat([W_Q, b_Q[:, None, :]], dim=1)  # [head, d_model + 1, d_head]
        k_eff = torch.cat([W_K, b_K[:, None, :]], dim=1)
        even = FactoredMatrix(q_eff, k_eff.transpose(-1, -2)).make_even()
        q_even, k_even = even.A, even.B.transpose(-1, -2)
        U, S, V = FactoredMatrix(W_V, W_O).svd()  # W_V·W_O = U diag(S) Vᵀ
        _param(attn, "W_Q", q_even[:, :-1], like)
        _param(attn, "b_Q", q_even[:, -1], like)
        _param(attn, "W_K", k_even[:, :-1], like)
        _param(attn, "b_K", k_even[:, -1], like)
        _param(attn, "W_V", U * S[:, None, :], like)
        _param(attn, "W_O", V.transpose(-1, -2), like)
        if attn.b_V is None:  # a model without attention biases gains them (b_Q, b_K carry the old biases' role)
            _param(attn, "b_V", zeros, like)
        if attn.b_O is None:
            _param(attn, "b_O", torch.zeros(W_O.shape[-1], dtype=torch.float64, device=W_O.device), like)
    model.cfg.attn_bias = model.cfg.attn_out_bias = True


@torch.no_grad()
def process_weights(model, fold_ln: bool = False, center_writing_weights: bool = False, center_unembed: bool = False,
                    fold_value_biases: bool = False, refactor_factored_attn_matrices: bool = False):
    """Apply TransformerLens' weight processing in place (TL's order) and record it in ``cfg.weight_processing``.

    Each step keeps log-probabilities unchanged (``center_unembed`` shifts each position's logits by a
    constant). Steps already applied are no-ops. Returns the model.
    """
    if refactor_factored_attn_matrices:
        _check_refactorable(model)  # before any step changes the weights
    chosen = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights,
              "center_unembed": center_unembed, "fold_value_biases": fold_value_biases,
              "refactor_factored_attn_matrices": refactor_factored_attn_matrices}
    steps = {"fold_ln": _fold_ln, "center_writing_weights": _center_writing_weights,
             "center_unembed": _center_unembed, "fold_value_biases": _fold_value_biases,
             "refactor_factored_attn_matrices": _refactor_factored_attn_matrices}
    for name in STEPS:
        # a step returns False when it cannot be exact here and skips (with a warning): then it is not recorded
        if chosen[name] and name not in model.cfg.weight_processing and steps[name](model) is not False:
            model.cfg.weight_processing.append(name)
    model._unfolded_warned = False
    return model


# --- the warning TL's cache methods need on an unprocessed model -------------------------------------
def _norms_are_trivial(model) -> bool:
    """True when every pre-norm has unit gain and no bias (e.g. OLMo's parameter-free LayerNorm)."""
    names = ("ln1", "ln2", "ln1_post", "ln2_post")
    norms = [getattr(b, n) for b in model.blocks for n in names if hasattr(b, n)]
    norms += [model.ln_final] if model.cfg.final_norm else []
    for norm in norms:
        if any(t is not None and t.device.type == "meta" for t in (norm.w, norm.b)):
            return False  # offloaded (accelerate): cannot be read here, so assume it matters
        if norm.w is not None and not torch.all(norm.gain(norm.w.dtype) == 1):
            return False
        if norm.b is not None and torch.any(norm.b != 0):
            return False
    return True


def warn_if_unfolded(model) -> None:
    """Warn (once per model) that TL's apply_ln methods ignore the norms' gains on an unfolded model."""
    cfg = model.cfg
    if getattr(model, "_unfolded_warned", False) or cfg.norm_folded or cfg.normalization_type is None:
        return
    model._unfolded_warned = True
    if _norms_are_trivial(model):
        return
    warnings.warn(
        "this model's norms are not folded: TransformerLens' apply_ln_to_stack (decompose_resid/"
        "accumulated_resid(apply_ln=True), logit_attrs) divides by the cached scale but ignores the norms' "
        "gains and biases, so direct logit attributions will not add up to the logits. Load with "
        "interp.load(..., fold_ln=True, center_writing_weights=True, center_unembed=True, "
        "fold_value_biases=True) or call model.process_weights(fold_ln=True, ...) first.",
        UserWarning, stacklevel=3,
    )


class InterpActivationCache(ActivationCache):
    """TransformerLens' ActivationCache, warning once when an apply_ln method meets unfolded norms."""

    def apply_ln_to_stack(self, *args, **kwargs):
        warn_if_unfolded(self.model)
        return super().apply_ln_to_stack(*args, **kwargs)
