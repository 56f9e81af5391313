"""The universal path: any `transformers` causal LM, wrapped (not converted) with TransformerLens hook names.

A native family (:mod:`interp.loading.families`) converts the weights into our HookedDecoder. Every other
causal LM — attention, state-space, recurrent or hybrid — opens here: the `transformers` modules keep doing
the arithmetic, and hook points are attached at the boundaries every architecture has.

* ``hook_embed`` (the input embedding's output), ``blocks.{i}.hook_resid_pre`` / ``hook_resid_post`` (a
  decoder layer's input and output), ``ln_final.hook_out`` (the final norm's output, its gain applied: not
  TransformerLens' ``hook_normalized``, which is before the gain and needs the norm's internals) and
  ``hook_unembed`` (the LM head's output): torch forward (pre-)hooks on the HF modules route the tensor
  through a ``HookPoint``, so a hook's edit replaces what the HF module receives or returns.
* Inside a layer, its token mixer and its MLP are told apart by watching one short probe forward at load
  time (the first and second non-norm children a layer calls). An attention mixer's output is
  ``blocks.{i}.hook_attn_out``; a state-space / recurrent / linear-attention mixer's is
  ``blocks.{i}.hook_mixer_out``; the MLP's (dense or MoE) is ``blocks.{i}.hook_mlp_out``. These are the
  modules' outputs: where a family post-norms or scales them before the residual add they are not what joins
  the residual, and the probe then withholds ``hook_resid_mid`` (``model.capabilities`` says so).
* ``blocks.{i}.hook_resid_mid`` where the probe shows the layer is ``x + mixer(...) + mlp(...)`` with the MLP
  reading the residual after the mixer: it is ``resid_pre + mixer output``, and an edit to it is passed on
  as a change of the mixer's output, so it takes effect exactly.
* Attention layers: ``blocks.{i}.attn.hook_q/k/v`` ``[batch, pos, head, d_head]`` (k/v with the model's
  key/value heads), ``hook_attn_scores`` / ``hook_pattern`` ``[batch, head, query, key]`` and ``hook_z``,
  captured by :func:`interp_attention`, registered with `transformers`' ``AttentionInterface`` under the
  name ``"interp"`` and selected with ``set_attn_implementation``. HF computes the projections, RoPE, QK-norm
  and masks as always, so q and k are the *rotated* ones HF hands to attention. A layer runs PyTorch SDPA
  unless something hooks its scores or pattern (or the family needs a soft-cap or attention sinks): then it
  runs the eager oracle (scale·qkᵀ, soft-cap, HF's mask, sinks, softmax) and the pattern is exact.

What needs weights interp cannot read in a general way (per-head W_Q/W_K/W_V/W_O, MLP matrices,
TransformerLens' weight processing, the lazy fused-pattern cache) raises one line naming the reason.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from interp.errors import InterpError
from interp.model.hook_names import CheckedHookNamesMixin, similar_hook_names
from interp.model.text import TextMixin, is_text

ATTN_NAME = "interp"
# class-name endings of the causal LMs the universal path opens (ForConditionalGeneration: a multimodal model's
# text decoder with its LM head, run on token ids only; an encoder-decoder one is refused by its config)
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")  # our AttentionInterface / AttentionMaskInterface name
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f", "final_norm", "ln_out")
# kwargs an attention call may carry that the SDPA path cannot honour: they go to the eager oracle
_EAGER_KWARGS = ("softcap", "s_aux", "position_bias")


# --- the attention function ------------------------------------------------------------------------
_running = threading.local()  # the (model, layer) whose decoder layer is running in this thread


def _current():
    stack = getattr(_running, "stack", None)
    return stack[-1] if stack else None


def _has_hooks(hp: HookPoint) -> bool:
    return bool(hp._forward_hooks)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _eager(query, key, value, mask, scaling, softcap, sinks, is_causal, hooks):
    """The numerical oracle: scores = scale·qkᵀ (soft-capped), + HF's mask, softmax (with sinks), @ v."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores + mask if mask.dtype != torch.bool else scores.masked_fill(~mask, float("-inf"))
    elif is_causal and query.shape[2] > 1:
        q, k = query.shape[2], key.shape[2]
        keep = torch.ones(q, k, dtype=torch.bool, device=query.device).tril(k - q)
        scores = scores.masked_fill(~keep, float("-inf"))
    if hooks is not None:
        scores = hooks.hook_attn_scores(scores)
    if sinks is not None:  # GPT-OSS: a per-head logit in every row's softmax that attends to nothing
        sink = sinks.reshape(1, -1, 1, 1).to(scores.dtype).expand(*scores.shape[:-1], 1)
        combined = torch.cat([scores, sink], dim=-1)
        pattern = torch.softmax(combined - combined.amax(-1, keepdim=True), dim=-1)[..., :-1]
    else:
        pattern = torch.softmax(scores, dim=-1)
    pattern = torch.nan_to_num(pattern)  # a fully masked row (padding) attends to nothing, not NaN
    if hooks is not None:
        pattern = hooks.hook_pattern(pattern)
    return torch.matmul(pattern.to(value.dtype), value), pattern


def interp_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An ``AttentionInterface`` function: q/k/v/scores/pattern/z through the running layer's hook points.

    ``query`` [batch, heads, q, d], ``key``/``value`` [batch, kv_heads, k, d] as HF passes them (after RoPE);
    returns ``(z [batch, q, heads, d], pattern or None)`` as HF's own functions do.
    """
    if _probe_callback is not None:
        _probe_callback()
    running = _current()
    # None outside our forward, or in a layer whose attention the probe did not see: run, do not hook
    hooks = getattr(running[0].blocks[running[1]], "attn", None) if running is not None else None
    if hooks is not None:
        query = hooks.hook_q(query.transpose(1, 2)).transpose(1, 2)
        key = hooks.hook_k(key.transpose(1, 2)).transpose(1, 2)
        value = hooks.hook_v(value.transpose(1, 2)).transpose(1, 2)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    n_rep = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    eager = hooks is not None and (_has_hooks(hooks.hook_attn_scores) or _has_hooks(hooks.hook_pattern))
    eager = eager or any(kwargs.get(k) is not None for k in _EAGER_KWARGS)
    if kwargs.get("position_bias") is not None:
        bias = kwargs["position_bias"]
        attention_mask = bias if attention_mask is None else (
            attention_mask + bias if attention_mask.dtype != torch.bool else bias.masked_fill(~attention_mask, float("-inf")))
    pattern = None
    if eager:
        z, pattern = _eager(query, key, value, attention_mask, scaling, kwargs.get("softcap"), kwargs.get("s_aux"),
                            is_causal, hooks)
    else:
        causal = bool(is_causal) and attention_mask is None and query.shape[2] > 1
        z = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, is_causal=causal, scale=scaling)
    if dropout and module.training:
        z = torch.nn.functional.dropout(z, p=dropout)
    z = z.transpose(1, 2)
    if hooks is not None:
        z = hooks.hook_z(z)
    return z.contiguous(), pattern


def register_attention() -> None:
    """Register :func:`interp_attention` (and eager masks, which it reads) with `transformers` under "interp"."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    if ATTN_NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ATTN_NAME, interp_attention)
        AttentionMaskInterface.register(ATTN_NAME, eager_mask)


# --- hook containers -------------------------------------------------------------------------------
class AttentionHooks(nn.Module):
    def __init__(self):
        super().__init__()
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())


class UniversalBlock(nn.Module):
    """The hook points of one decoder layer (which ones depends on what the probe saw the layer do)."""

    def __init__(self, layout: LayerLayout):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        if layout.mixer is not None:
            setattr(self, "hook_attn_out" if layout.attention else "hook_mixer_out", HookPoint())
        if layout.mlp is not None:
            self.hook_mlp_out = HookPoint()
        if layout.resid_mid:
            self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()
        if layout.attention:
            self.attn = AttentionHooks()


class FinalNorm(nn.Module):
    """``ln_final``: the HF final norm (held, not owned) followed by ``hook_out`` (its output, gain applied)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self._norm = [norm]  # a list keeps the HF module out of this module's children
        self.hook_out = HookPoint()

    def forward(self, x):
        return self.hook_out(self._norm[0](x))


# --- structure -------------------------------------------------------------------------------------
@dataclass
class LayerLayout:
    mixer: str | None = None  # the child module name of the token mixer
    attention: bool = False  # the mixer calls the attention interface
    mlp: str | None = None
    resid_mid: bool = False
    additive: bool = False  # resid_post == resid_pre + mixer out (+ mlp out)


@dataclass
class UniversalConfig:
    """What TransformerLens' cache and interp's analyzers read of ``model.cfg``, for a wrapped model."""

    n_layers: int
    d_model: int
    d_vocab: int
    n_heads: int = 0
    d_head: int = 0
    n_kv_heads: int = 0
    d_mlp: int = 0
    n_ctx: int = 2**31 - 1
    dtype: str = "float32"
    path: str = "universal"  # which loading path built the model ("native" models are HookedDecoders)
    architecture: str = ""
    model_type: str = ""
    layer_kinds: list = field(default_factory=list)  # "attention", "mixer" (state-space/recurrent), "other"
    name: str = ""
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    default_prepend_bos: bool = True
    source: dict = field(default_factory=dict)
    # TransformerLens' ActivationCache fields: the norms are HF's, so its apply_ln has no LN to imitate
    normalization_type: str | None = None
    attn_only: bool = False
    final_rms: bool = False
    final_norm: bool = True
    parallel_residual: bool = False
    positional: str = "hf"  # HF positions (RoPE, ALiBi, learned, none) are applied inside its modules
    norm_placement: str = "hf"
    n_experts: int = 0
    device: str = "cpu"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def is_moe(self, layer: int) -> bool:
        return False


@dataclass
class Capabilities:
    """Which path built the model, which hooks it offers, and what it does not offer and why."""

    path: str
    architecture: str
    hooks: list
    not_offered: dict  # feature -> reason

    def __str__(self) -> str:
        lines = [f"{self.architecture}: {self.path} path, {len(self.hooks)} hook points"]
        lines += [f"  not offered: {k} — {v}" for k, v in self.not_offered.items()]
        return "\n".join(lines)


def _text_config(hf):
    cfg = hf.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _find_layers(hf) -> tuple[nn.Module, nn.ModuleList]:
    """(the decoder, its list of layers): the longest ModuleList under the decoder, preferring the config's count."""
    found = hf.get_decoder() if hasattr(hf, "get_decoder") else hf
    want = getattr(_text_config(hf), "num_hidden_layers", None)
    lists, decoder = [], hf
    # get_decoder() is the text model, except in a few classes (ModernBERT-decoder: the LM head): then search hf
    for decoder in (found, hf) if isinstance(found, nn.Module) else (hf,):
        lists = [(n, m) for n, m in decoder.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        if lists:
            break
    if not lists:
        raise InterpError(refusal(type(hf).__name__, "no list of decoder layers found to hook"))
    exact = [x for x in lists if len(x[1]) == want]
    _, layers = min(exact or lists, key=lambda x: (x[0].count("."), -len(x[1])))
    return decoder, layers


def _find_final_norm(decoder: nn.Module) -> nn.Module | None:
    children = dict(decoder.named_children())
    for name in FINAL_NORM_NAMES:
        if name in children:
            return children[name]
    norms = [m for m in children.values() if "norm" in type(m).__name__.lower()]
    return norms[-1] if norms else None


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower() or not any(True for _ in module.parameters())


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(out, value):
    return (value, *out[1:]) if isinstance(out, tuple) else value


def _hf_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- the model -------------------------------------------------------------------------------------
class UniversalModel(TextMixin, CheckedHookNamesMixin, HookedRootModule):
    """A `transformers` causal LM with TransformerLens hook points (see the module docstring)."""

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None, native_refusal: str | None = None):
        super().__init__()
        register_attention()
        self.hf = hf_model.eval()
        self._hf_attn = getattr(hf_model.config, "_attn_implementation", None)
        self._native_refusal = native_refusal
        decoder, layers = _find_layers(hf_model)
        self._layers = list(layers)
        self._set_attention(ATTN_NAME)
        # HF modules held by plain attributes, not registered: the HF model owns them (one state_dict entry each)
        object.__setattr__(self, "_embed", hf_model.get_input_embeddings())
        object.__setattr__(self, "_lm_head", hf_model.get_output_embeddings())
        norm = _find_final_norm(decoder)
        layouts = self._probe()
        self.cfg = self._config(layouts, norm is not None)
        self.tokenizer = tokenizer
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([UniversalBlock(layout) for layout in layouts])
        if norm is not None:
            self.ln_final = FinalNorm(norm)
        self.hook_unembed = HookPoint()
        self._layouts = layouts
        self._handles = self._attach(norm)
        self.setup()

    def setup(self):
        # TransformerLens' setup names every submodule; the HF model's modules keep their own attributes
        self.mod_dict, self.hook_dict = {}, {}
        for name, module in self.named_modules():
            if name and name != "hf" and not name.startswith("hf."):
                module.name = name
                self.mod_dict[name] = module
                if isinstance(module, HookPoint):
                    self.hook_dict[name] = module

    def _set_attention(self, name: str) -> None:
        try:
            self.hf.set_attn_implementation(name)
        except (ValueError, AttributeError, NotImplementedError) as err:
            if getattr(self.hf.config, "_attn_implementation", None) != name:
                self._attn_error = str(err).splitlines()[0]

    # --- the probe: what does each layer do? ---------------------------------------------------
    def _probe(self) -> list[LayerLayout]:
        """One short forward with grad, watching every layer's children: which is the mixer, which the MLP,
        whether attention runs through our interface, and whether the layer is ``x + mixer + mlp``."""
        n = len(self._layers)
        calls = [[] for _ in range(n)]  # child names, in call order
        seen = {}  # (layer, child) -> (input, output)
        attn_in = [[] for _ in range(n)]  # children during which the attention interface was called
        layer_io = [None] * n
        handles = []
        probe_stack = []

        class _Probe:  # stands in for the model in the attention function's running stack
            blocks = None

        def on_attention(*_):
            if probe_stack:
                i, child = probe_stack[-1]
                attn_in[i].append(child)

        for i, layer in enumerate(self._layers):
            for cname, child in layer.named_children():
                if _is_norm(child):
                    continue

                def pre(mod, args, kwargs, i=i, cname=cname):
                    probe_stack.append((i, cname))
                    calls[i].append(cname)
                    seen[(i, cname)] = [_first(args) if args else kwargs.get("hidden_states"), None]

                def post(mod, args, kwargs, out, i=i, cname=cname):
                    probe_stack.pop()
                    seen[(i, cname)][1] = _first(out)

                handles.append(child.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(child.register_forward_hook(post, with_kwargs=True))

            def lpre(mod, args, kwargs, i=i):
                layer_io[i] = [args[0] if args else kwargs.get("hidden_states"), None]

            def lpost(mod, args, kwargs, out, i=i):
                layer_io[i][1] = _first(out)

            handles.append(layer.register_forward_pre_hook(lpre, with_kwargs=True))
            handles.append(layer.register_forward_hook(lpost, with_kwargs=True))
        global _probe_callback
        _probe_callback = on_attention
        try:
            tokens = torch.arange(1, 7, device=self._embed.weight.device)[None] % self._vocab_size()
            with torch.enable_grad():
                self.hf(input_ids=tokens, use_cache=False)
        except Exception as err:  # noqa: BLE001 (any failure of the HF forward is reported in one line)
            raise InterpError(refusal(type(self.hf).__name__, f"a test forward through transformers failed "
                                      f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]})")) from None
        finally:
            _probe_callback = None
            for h in handles:
                h.remove()
        return [self._layout(i, calls[i], seen, attn_in[i], layer_io[i]) for i in range(n)]

    def _layout(self, i, calls, seen, attn_in, io) -> LayerLayout:
        order = list(dict.fromkeys(calls))
        if len(order) == 0 or len(order) > 2 or len(calls) != len(order):
            # not a mixer (+ MLP) layer we can name parts of: only its boundaries are hooked
            return LayerLayout(attention=len(attn_in) == 1 and len(calls) == len(order))
        mixer = order[0]
        mlp = order[1] if len(order) == 2 else None
        attention = attn_in == [mixer]
        layout = LayerLayout(mixer=mixer, attention=attention, mlp=mlp)
        x, out = io if io is not None else (None, None)
        parts = [seen[(i, c)][1] for c in order]
        if not all(isinstance(t, torch.Tensor) for t in (x, out, *parts)) or any(p.shape != x.shape for p in parts):
            return layout
        total = x + sum(parts)
        scale = out.detach().abs().max().clamp(min=1e-6)
        layout.additive = bool(((total - out).abs().max() / scale) < 1e-5)
        if layout.additive and mlp is not None and parts[0].requires_grad:
            mlp_in = seen[(i, mlp)][0]
            grad = torch.autograd.grad(mlp_in.sum(), parts[0], allow_unused=True, retain_graph=True)[0]
            layout.resid_mid = grad is not None  # the MLP reads the residual after the mixer (not parallel)
        return layout

    def _vocab_size(self) -> int:
        return int(self._embed.weight.shape[0])

    # --- config and capabilities ----------------------------------------------------------------
    def _config(self, layouts, has_norm: bool) -> UniversalConfig:
        tc = _text_config(self.hf)
        d_model = int(self._embed.weight.shape[1])
        n_heads = int(getattr(tc, "num_attention_heads", 0) or 0)
        d_head = int(getattr(tc, "head_dim", 0) or (d_model // n_heads if n_heads else 0))
        n_kv = int(getattr(tc, "num_key_value_heads", 0) or n_heads)
        head = self._lm_head
        d_vocab = int(head.weight.shape[0]) if head is not None else self._vocab_size()
        arch = type(self.hf).__name__
        kinds = ["attention" if lay.attention else "mixer" if lay.mixer else "other" for lay in layouts]
        n_ctx = getattr(tc, "max_position_embeddings", None) or 2**31 - 1
        return UniversalConfig(
            n_layers=len(layouts), d_model=d_model, d_vocab=d_vocab, n_heads=n_heads, d_head=d_head, n_kv_heads=n_kv,
            d_mlp=int(getattr(tc, "intermediate_size", 0) or 0), n_ctx=int(n_ctx),
            dtype=_hf_dtype_name(self._embed.weight.dtype), architecture=arch, model_type=str(tc.model_type),
            layer_kinds=kinds, name=getattr(self.hf.config, "name_or_path", "") or arch,
            bos_token_id=getattr(tc, "bos_token_id", None), eos_token_id=_one(getattr(tc, "eos_token_id", None)),
            default_prepend_bos=getattr(tc, "bos_token_id", None) is not None,
            source={"transformers_class": arch, "path": "universal"}, final_norm=has_norm,
            parallel_residual=not all(lay.resid_mid for lay in layouts if lay.mlp),
            n_experts=int(getattr(tc, "num_local_experts", 0) or getattr(tc, "num_experts", 0) or 0))

    @property
    def capabilities(self) -> Capabilities:
        why = {}
        if self._native_refusal:
            why["native path"] = self._native_refusal
        if getattr(self, "_attn_error", None):
            why["attention hooks"] = f"this class does not accept a custom attention function ({self._attn_error})"
        if self.cfg.n_heads and not any(lay.attention for lay in self._layouts) and "attention hooks" not in why:
            why["attention hooks"] = ("no layer called transformers' AttentionInterface (this class computes attention "
                                      "itself, e.g. Bloom): its token mixers' outputs are blocks.{l}.hook_mixer_out")
        for i, lay in enumerate(self._layouts):
            if not lay.resid_mid and lay.mlp is not None:
                why.setdefault("hook_resid_mid", []).append(i)
            if lay.mixer is None:
                why.setdefault("per-component hooks", []).append(i)
        if "hook_resid_mid" in why:
            why["hook_resid_mid"] = (f"layers {why['hook_resid_mid']}: the layer is not x + mixer + mlp with the MLP "
                                     "reading the residual after the mixer (parallel, post-norms or scaled sublayers)")
        if "per-component hooks" in why:
            why["per-component hooks"] = (f"layers {why['per-component hooks']}: no single mixer/MLP pair to hook "
                                          "(only resid_pre/resid_post there)")
        why.update({
            "ln_final.hook_normalized / hook_scale, blocks.{l}.ln1/ln2.*": "the norms' internals differ per family; "
            "ln_final.hook_out is the final norm's output",
            "mlp.hook_pre / hook_post (neurons)": "MLP internals differ per family (dense, gated, experts); "
            "blocks.{l}.hook_mlp_out is the MLP's output",
            "weights (W_Q, W_K, W_V, W_O, W_in, W_out)": _WEIGHTS_WHY,
            "weight processing (fold_ln, centering)": _WEIGHTS_WHY,
            "lazy fused patterns": "patterns are computed eagerly in the hooked layers (the universal path "
                                   "runs HF's masks, which the lazy rebuild cannot reproduce in general)",
            "start_at_layer / stop_at_layer, KV-cached generate": "HF's own forward runs the layers",
        })
        return Capabilities("universal", self.cfg.architecture, sorted(self.hook_dict), why)

    # --- hooks on the HF modules ----------------------------------------------------------------
    def _attach(self, norm) -> list:
        handles = [self._embed.register_forward_hook(lambda m, a, out: self.hook_embed(out))]
        for i, (layer, layout) in enumerate(zip(self._layers, self._layouts, strict=True)):
            block = self.blocks[i]
            handles.append(layer.register_forward_pre_hook(self._layer_pre(i), with_kwargs=True))
            handles.append(layer.register_forward_hook(self._layer_post(i), with_kwargs=True, always_call=True))
            children = dict(layer.named_children())
            if layout.mixer is not None:
                out_hook = block.hook_attn_out if layout.attention else block.hook_mixer_out
                handles.append(children[layout.mixer].register_forward_hook(self._mixer_post(i, out_hook)))
            if layout.mlp is not None:
                handles.append(children[layout.mlp].register_forward_hook(
                    lambda m, a, out, hp=block.hook_mlp_out: _replace_first(out, hp(_first(out)))))
        if norm is not None:
            handles.append(norm.register_forward_hook(lambda m, a, out: self.ln_final.hook_out(out)))
        if self._lm_head is not None:
            handles.append(self._lm_head.register_forward_hook(lambda m, a, out: self.hook_unembed(out)))
        return handles

    def _layer_pre(self, i: int):
        block = self.blocks[i]

        def pre(mod, args, kwargs):
            _running.stack = getattr(_running, "stack", [])
            _running.stack.append((self, i))
            if args and isinstance(args[0], torch.Tensor):
                x = block.hook_resid_pre(args[0])
                block._resid_pre = x
                return (x, *args[1:]), kwargs
            if isinstance(kwargs.get("hidden_states"), torch.Tensor):
                kwargs["hidden_states"] = x = block.hook_resid_pre(kwargs["hidden_states"])
                block._resid_pre = x
            return args, kwargs

        return pre

    def _layer_post(self, i: int):
        block = self.blocks[i]

        def post(mod, args, kwargs, out):
            _running.stack.pop()
            block.__dict__.pop("_resid_pre", None)
            return _replace_first(out, block.hook_resid_post(_first(out)))

        return post

    def _mixer_post(self, i: int, out_hook: HookPoint):
        block = self.blocks[i]

        def post(mod, args, out):
            y = out_hook(_first(out))
            mid_hook = getattr(block, "hook_resid_mid", None)
            if mid_hook is not None and _has_hooks(mid_hook):
                x = block._resid_pre
                mid = mid_hook(x + y)
                if not torch.equal(mid, x + y):  # edited: pass the edit on as a change of the mixer output
                    y = mid - x
            return _replace_first(out, y)

        return post

    # --- forward --------------------------------------------------------------------------------
    def forward(self, input, return_type: str | None = "logits", loss_per_token: bool = False,
                prepend_bos: bool | None = None, padding_side: str | None = None,
                attention_mask: torch.Tensor | None = None, start_at_layer=None, stop_at_layer=None, **kwargs):
        """Run the HF model on tokens [batch, pos] (or text); ``return_type`` as HookedDecoder's."""
        if return_type not in ("logits", "loss", "both", None):
            raise InterpError(f"return_type must be 'logits', 'loss', 'both' or None; got {return_type!r}.")
        if start_at_layer is not None or stop_at_layer is not None:
            raise InterpError("start_at_layer / stop_at_layer: not offered on the universal path (HF's forward "
                              "runs the layers); read blocks.{l}.hook_resid_pre from run_with_cache instead.")
        if is_text(input):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
            if attention_mask is None and tokens.shape[0] > 1 and self._padding_side(padding_side) == "left":
                attention_mask = self.padding_mask(tokens, prepend_bos, "left")
        else:
            tokens = self._as_tokens(input)
        stack = list(getattr(_running, "stack", []))
        try:
            logits = self.hf(input_ids=tokens, attention_mask=attention_mask, use_cache=False).logits
        finally:
            _running.stack = stack  # an exception inside a layer must not leave it marked as running
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        from interp.model.transformer import HookedDecoder

        loss = HookedDecoder.loss(logits, tokens, per_token=loss_per_token, attention_mask=attention_mask)
        return loss if return_type == "loss" else (logits, loss)

    def _as_tokens(self, tokens) -> torch.Tensor:
        if isinstance(tokens, list):
            tokens = torch.tensor(tokens if tokens and isinstance(tokens[0], list) else [tokens])
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point():
            got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise InterpError(f"tokens must be integer token ids [batch, pos], a list of ids, or text; got {got}.")
        tokens = tokens[None] if tokens.ndim == 1 else tokens
        if tokens.ndim != 2 or tokens.numel() == 0:
            raise InterpError(f"tokens must have shape [batch, pos] with at least one token; got {tuple(tokens.shape)}.")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self._vocab_size():
            raise InterpError(f"token id {lo if lo < 0 else hi} is out of range: ids must be in "
                              f"[0, {self._vocab_size() - 1}] (the embedding's rows).")
        return tokens.long().to(self.device)

    def run_with_cache(self, *args, return_cache_object: bool = True, remove_batch_dim: bool = False,
                       lazy_patterns: bool = True, **kwargs):
        """TransformerLens' run_with_cache; patterns of hooked layers are computed eagerly (exact)."""
        names = kwargs.get("names_filter")
        for name in [names] if isinstance(names, str) else (names if isinstance(names, (list, tuple)) else []):
            self.check_hook_name(name)
        out, cache = super().run_with_cache(*args, remove_batch_dim=remove_batch_dim, **kwargs)
        if not return_cache_object:
            return out, cache
        return out, _cache_class()(cache, self, has_batch_dim=not remove_batch_dim)

    def check_hook_name(self, name) -> None:
        if isinstance(name, str) and name not in self.hook_dict:
            why = self.capabilities.not_offered
            close = similar_hook_names(self.hook_dict, name)
            extra = f" ({'; '.join(f'{k}: {v}' for k, v in why.items() if k.split()[0] in name)})" if why else ""
            raise InterpError(f"unknown hook name {name!r} on this {self.cfg.architecture} (universal path){extra}; "
                              f"similar names here: {close}. See model.hook_dict.")

    # --- weights: what can be read in general, and what cannot -----------------------------------
    @property
    def device(self) -> torch.device:
        return self._embed.weight.device

    @property
    def W_E(self) -> torch.Tensor:
        return self._embed.weight

    @property
    def W_U(self) -> torch.Tensor:
        if self._lm_head is None or not hasattr(self._lm_head, "weight"):
            raise InterpError(f"{self.cfg.architecture}: no linear LM head found, so there is no W_U.")
        return self._lm_head.weight.T

    @property
    def b_U(self) -> torch.Tensor:
        bias = getattr(self._lm_head, "bias", None)
        return bias if bias is not None else torch.zeros(self.cfg.d_vocab, dtype=self.W_U.dtype, device=self.device)

    def tokens_to_residual_directions(self, tokens) -> torch.Tensor:
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        return self.W_U[:, torch.as_tensor(tokens, device=self.device)].movedim(0, -1)

    def process_weights(self, *args, **kwargs):
        raise InterpError(f"weight processing: {_WEIGHTS_WHY}.")

    def _weights_refused(self, name: str):
        raise InterpError(f"{name}: {_WEIGHTS_WHY}.")

    W_Q = property(lambda self: self._weights_refused("W_Q"))
    W_K = property(lambda self: self._weights_refused("W_K"))
    W_V = property(lambda self: self._weights_refused("W_V"))
    W_O = property(lambda self: self._weights_refused("W_O"))
    W_in = property(lambda self: self._weights_refused("W_in"))
    W_out = property(lambda self: self._weights_refused("W_out"))

    def accumulated_bias(self, *args, **kwargs):
        raise InterpError(f"accumulated_bias: {_WEIGHTS_WHY}.")

    def generate(self, *args, **kwargs):
        raise InterpError("generate: not offered on the universal path yet; call model.hf.generate(...) "
                          "(HF's own sampling; hooks still fire) or load a native family.")

    def remove(self) -> nn.Module:
        """Detach every hook from the HF model and give it back (with its original attention function)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._hf_attn is not None:
            self._set_attention(self._hf_attn)
        return self.hf


_WEIGHTS_WHY = ("not offered on the universal path: it wraps transformers modules whose weight layouts differ per "
                "family, so interp cannot read per-head weight matrices in a general way (a native family can: "
                "see `interp models --families`)")
_probe_callback = None


def _cache_class():
    from interp.model.processing import InterpActivationCache

    class UniversalActivationCache(InterpActivationCache):
        """A cache whose missing entries say why (a hybrid's state-space layer has no attention pattern)."""

        def __getitem__(self, key):
            if isinstance(key, str) and key not in self.cache_dict and key.startswith("blocks."):
                model = self.model
                if key in model.hook_dict:
                    raise InterpError(f"{key!r} was not cached: widen names_filter to include it.")
                layer = key.split(".")[1]
                kinds = model.cfg.layer_kinds
                kind = kinds[int(layer)] if layer.isdigit() and int(layer) < len(kinds) else None
                raise InterpError(f"{key!r} does not exist on this {model.cfg.architecture} (universal path): layer "
                                  f"{layer} is a {kind} layer; model.capabilities lists the hooks it has.")
            return super().__getitem__(key)

    return UniversalActivationCache


def refusal(arch: str, why: str) -> str:
    """The one line a refused architecture gets: its class, why, and where to see what opens."""
    return f"architecture {arch} cannot be opened: {why}; see `interp models --families` for what opens."


def _one(x):
    return x[0] if isinstance(x, (list, tuple)) and x else x


def from_hf_universal(hf_model: nn.Module, tokenizer: Any = None, native_refusal: str | None = None) -> UniversalModel:
    """Wrap a `transformers` causal LM on the universal path (see the module docstring)."""
    if getattr(hf_model.config, "is_encoder_decoder", False):
        raise InterpError(refusal(type(hf_model).__name__, "it is an encoder-decoder model (interp opens decoder-only "
                                                           "causal LMs)"))
    if not type(hf_model).__name__.endswith(CAUSAL_SUFFIXES):
        raise InterpError(refusal(type(hf_model).__name__, "it is not a causal language model with its LM head (a base "
                                                           "model, masked LM or classifier has no next-token logits: "
                                                           "load the family's *ForCausalLM class)"))
    if not callable(getattr(hf_model, "get_output_embeddings", None)) or hf_model.get_output_embeddings() is None:
        raise InterpError(refusal(type(hf_model).__name__, "it has no LM head (a base model or a classifier has no "
                                                           "next-token logits: load its *ForCausalLM class)"))
    return UniversalModel(hf_model, tokenizer=tokenizer, native_refusal=native_refusal)


__all__ = ["ATTN_NAME", "Capabilities", "UniversalConfig", "UniversalModel", "from_hf_universal", "interp_attention",
           "register_attention"]
