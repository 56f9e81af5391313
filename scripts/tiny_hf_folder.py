"""Write a tiny randomly initialised `transformers` model folder of any architecture, offline (no download).

    bash run.sh python scripts/tiny_hf_folder.py Ernie4_5ForCausalLM tiny-ernie

The folder holds config.json, model.safetensors and a word-level tokenizer over the words t0 ... t95, so
``interp.load("tiny-ernie")`` and ``interp report "t5 t9 t3" --model tiny-ernie`` open it (on the universal path
when the class has no native row: see `interp models --families`). The config is the class's default shrunk to 2
layers of width 32 (tests/tiny_hf.py, the family matrix's helper); the weights are random, so the analyses show
the machinery, not a trained model's behaviour.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("architecture", help="a transformers class name, e.g. Ernie4_5ForCausalLM, MambaForCausalLM")
    p.add_argument("out", type=Path, help="the folder to write (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="write into an existing folder")
    args = p.parse_args(argv)
    from conftest import word_level_tokenizer
    from tiny_hf import model_class, tiny_model

    if model_class(args.architecture) is None:
        print(f"architecture: transformers has no class {args.architecture!r}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.force:
        print(f"out: {args.out} exists; pass --force to write into it", file=sys.stderr)
        return 2
    hf = tiny_model(args.architecture)
    hf.config.architectures = [args.architecture]
    hf.save_pretrained(args.out)
    word_level_tokenizer(hf.config.get_text_config().vocab_size).save(str(args.out / "tokenizer.json"))
    print(f"wrote {args.out} ({args.architecture}, {sum(t.numel() for t in hf.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
