"""The model zoo: the model folders shipped under ``models/``, found without importing torch.

``interp models`` and every front end's "which folder is this model" question only read file names and a
``config.json``, so they live here, below ``interp.loading`` (which imports torch and `transformers`, several
seconds on a cold machine).
"""

from __future__ import annotations

import json
from pathlib import Path

# The zoo lives beside the package in a source checkout (models/ is a data folder, not a package).
ZOO = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL = "docs-bible-austen-2l"  # the shipped checkpoint (models/docs-bible-austen-2l), n_ctx 256
# (docs-bible-austen-2l-2k is the same model continued on 2048-token windows; a prompt too long for the default
# is pointed at it, see interp.report.inputs.check_prompts_fit)
CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"


def is_interp_checkpoint(folder: Path) -> bool:
    """Our checkpoint rather than a transformers folder: model.safetensors beside a config.json of ours
    (an unreadable config.json also counts, so that loading it reports what is wrong with the file)."""
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        return False
    try:
        data = json.loads((folder / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True
    # every transformers config names its model_type (some, XGLM's, also have a d_model field); ours never does
    return isinstance(data, dict) and "model_type" not in data


def zoo_models() -> list[str]:
    if not ZOO.is_dir():
        return []
    return sorted(p.name for p in ZOO.iterdir() if is_interp_checkpoint(p))


def zoo_context(name: str) -> int | None:
    """n_ctx of a zoo model, read from its config.json (None when unreadable)."""
    try:
        n = json.loads((ZOO / name / CONFIG).read_text()).get("n_ctx")
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) else None


def default_model_name() -> str:
    names = zoo_models()
    return DEFAULT_MODEL if DEFAULT_MODEL in names or not names else names[0]
