"""TransformerLens' opt-in hook points: per-head attention inputs, the MLP input, per-head results.

They cost memory (the residual copied once per head) so, as in TransformerLens, each is off until asked for:

=============================  ======================================================  ==========================
switch                         hook points (per block)                                 shape
=============================  ======================================================  ==========================
``set_use_attn_result(True)``  ``attn.hook_result``: each head's output, W_O applied   [batch, pos, head, d_model]
``set_use_attn_in(True)``      ``hook_attn_in``: one residual copy per head, before    [batch, pos, head, d_model]
                               ln1, feeding q, k and v of that head
``set_use_split_qkv_input``    ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``:  [batch, pos, head, d_model]
                               separate copies for queries, keys (n_kv_heads) and
                               values (n_kv_heads), so each path is patched alone
``set_use_hook_mlp_in(True)``  ``hook_mlp_in``: the MLP branch's input, before ln2     [batch, pos, d_model]
=============================  ======================================================  ==========================

The per-head copies are normalised by ln1 one head at a time, exactly as TransformerLens (and its
``TransformerBridge``) computes them; with ``use_attn_in`` and grouped-query attention, key/value head ``j``
reads copy ``j`` (the bridge's convention). ``use_attn_in`` and ``use_split_qkv_input`` exclude each other.
A hook point exists only while its switch is on, so every name in ``model.hook_dict`` fires in a forward pass;
asking for one while it is off raises an error naming the switch.
"""

from __future__ import annotations

import torch
from transformer_lens.hook_points import HookPoint

from interp.errors import InterpError

# flag -> (hook point names on the block, relative to it)
GATED = {
    "use_attn_result": ("attn.hook_result",),
    "use_attn_in": ("hook_attn_in",),
    "use_split_qkv_input": ("hook_q_input", "hook_k_input", "hook_v_input"),
    "use_hook_mlp_in": ("hook_mlp_in",),
}
SETTER = {flag: f"set_{flag}" for flag in GATED}


def gated_flag(hook_name: str) -> str | None:
    """The cfg flag that switches ``hook_name`` (e.g. 'blocks.0.hook_q_input') on, or None."""
    for flag, names in GATED.items():
        if any(hook_name.endswith("." + n) for n in names):
            return flag
    return None


def register_gated_block_hooks(block) -> None:
    """Create the block's gated hook points whose flag is on and drop those whose flag is off."""
    for flag, names in GATED.items():
        on = bool(getattr(block.cfg, flag))
        for name in names:
            owner = block.attn if name.startswith("attn.") else block
            attr = name.split(".")[-1]
            if on and not hasattr(owner, attr):
                setattr(owner, attr, HookPoint().train(owner.training))  # eval() stays eval()
            elif not on and hasattr(owner, attr):
                getattr(owner, attr).remove_hooks("both", including_permanent=True)
                delattr(owner, attr)


def _per_head(x: torch.Tensor, n: int) -> torch.Tensor:
    """[b, pos, d] -> [b, pos, n, d], a real copy (a hook may edit one head's copy in place)."""
    return x[:, :, None, :].expand(-1, -1, n, -1).clone()


def attention_input(block, x: torch.Tensor, norm):
    """What the block's attention reads: ``norm(x)``, or per-head (q, k, v) inputs when a gated flag is on."""
    cfg = block.cfg
    apply = norm if norm is not None else (lambda t: t)
    if cfg.use_split_qkv_input:
        H, K = cfg.n_heads, cfg.n_kv_heads
        q = block.hook_q_input(_per_head(x, H))
        k = block.hook_k_input(_per_head(x, K))
        v = block.hook_v_input(_per_head(x, K))
        return apply(q), apply(k), apply(v)
    if cfg.use_attn_in:
        a = apply(block.hook_attn_in(_per_head(x, cfg.n_heads)))
        kv = a[:, :, : cfg.n_kv_heads]
        return a, kv, kv
    return apply(x)


def mlp_input(block, x: torch.Tensor) -> torch.Tensor:
    """The MLP branch's input, through ``hook_mlp_in`` when ``cfg.use_hook_mlp_in``."""
    return block.hook_mlp_in(x.clone()) if block.cfg.use_hook_mlp_in else x


class GatedHooksMixin:
    """TransformerLens' ``set_use_*`` switches for :class:`~interp.model.transformer.HookedDecoder`."""

    def _set_gated(self, flag: str, value: bool) -> None:
        if not isinstance(value, bool):
            raise InterpError(f"{SETTER[flag]} takes True or False; got {value!r}.")
        other = {"use_attn_in": "use_split_qkv_input", "use_split_qkv_input": "use_attn_in"}.get(flag)
        if value and other and getattr(self.cfg, other):
            raise InterpError(f"{flag} and {other} exclude each other: call {SETTER[other]}(False) first.")
        setattr(self.cfg, flag, value)
        for block in self.blocks:
            register_gated_block_hooks(block)
        self.setup()  # rebuild hook_dict / mod_dict from the hook points now present

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Record each head's output ``attn.hook_result`` [batch, pos, head, d_model] (memory: × n_heads)."""
        self._set_gated("use_attn_result", use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Separate per-head residual copies for queries, keys and values (``hook_q/k/v_input``)."""
        self._set_gated("use_split_qkv_input", use_split_qkv_input)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """One per-head residual copy feeding each head's q, k and v (``hook_attn_in``)."""
        self._set_gated("use_attn_in", use_attn_in)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """The MLP branch's input ``hook_mlp_in`` (before ln2)."""
        self._set_gated("use_hook_mlp_in", use_hook_mlp_in)
