"""Hook names checked before use: a misspelt name is one clear error, not a silent no-op or a KeyError.

TransformerLens' ``HookedRootModule`` reaches hook points through two doors — ``add_hook`` (``run_with_cache``,
``add_hook``) and ``_enable_hook_with_name`` (``run_with_hooks``, ``hooks()``) — so both are guarded here. Each
model says what a bad name means for it in its own ``check_hook_name``.
"""

from __future__ import annotations


def similar_hook_names(hook_dict, name: str, most: int = 4) -> list[str]:
    """Hook names ending like ``name`` (``blocks.9.hook_resid_pre`` -> every layer's ``hook_resid_pre``)."""
    return [n for n in hook_dict if n.split(".")[-1] == name.split(".")[-1]][:most] or sorted(hook_dict)[:6]


class CheckedHookNamesMixin:
    """Put before ``HookedRootModule`` in the bases; the class defines ``check_hook_name(name)``."""

    def check_hook_name(self, name) -> None:  # pragma: no cover - every model overrides it
        raise NotImplementedError

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False):
        self.check_hook_name(name)
        return super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def _enable_hook_with_name(self, name, hook, dir):
        self.check_hook_name(name)
        return super()._enable_hook_with_name(name, hook, dir)
