"""Training: token files and windows (``data``), the teacher-forced loop (``trainer``), and a CLI.

    python -m interp.train prepare data/corpus/corpus.jsonl --tokenizer data/tokenizer.json --out data/tokens
    python -m interp.train fit --data data/tokens --out runs/demo --steps 2000 --d-model 128 --positional rotary
    python -m interp.train export runs/demo --to models/my-model

Every :class:`~interp.model.config.DecoderConfig` field is a ``fit`` flag (``--norm-placement deepnorm``,
``--n-kv-heads 1``, ``--gated``, ...). ``fit`` resumes from ``<out>/latest.json`` when it exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from interp.argtypes import OneLineParser, seed
from interp.train.data import BatchSchedule, TokenData, Windows, prepare, write_token_files
from interp.train.trainer import TrainConfig, export_model, latest_checkpoint, lr_at, train

# Fields of DecoderConfig the trainer fills in itself (from the data) or that are not architecture.
_AUTO_FIELDS = {"d_vocab", "source"}


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    from interp.model.config import DecoderConfig

    group = parser.add_argument_group("model (DecoderConfig fields)")
    hints = typing.get_type_hints(DecoderConfig)
    for f in dataclasses.fields(DecoderConfig):
        if f.name in _AUTO_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        if base is bool:
            group.add_argument(flag, dest=f"model.{f.name}", action=argparse.BooleanOptionalAction, default=None)
        elif base in (int, float, str):
            group.add_argument(flag, dest=f"model.{f.name}", type=base, default=None, metavar=base.__name__.upper())


def _build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="interp train", description="Tokenize a corpus, train a model, export it.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="train/load a BPE tokenizer and write train.bin/val.bin/meta.json")
    p.add_argument("corpus", help=".jsonl ({'text': ...} per line) or .txt (documents separated by blank lines)")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json to use; trained and written if missing")
    p.add_argument("--out", required=True, help="token folder to write")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out")
    p.add_argument("--seed", type=seed, default=0)

    f = sub.add_parser("fit", help="train (or resume) a model on a token folder")
    defaults = TrainConfig(data="", out="")
    f.add_argument("--data", required=True, help="token folder from `prepare`")
    f.add_argument("--out", required=True, help="run folder (checkpoints, log.csv, loss.png)")
    for fld in dataclasses.fields(TrainConfig):
        if fld.name in ("data", "out", "model"):
            continue
        flag = "--" + fld.name.replace("_", "-")
        default = getattr(defaults, fld.name) if fld.name not in ("stride", "min_lr") else None
        hint = typing.get_type_hints(TrainConfig)[fld.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        if base is bool:
            f.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            f.add_argument(flag, type=base, default=default, help=f"default {default}")
    f.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    _add_model_flags(f)

    e = sub.add_parser("export", help="copy a run's latest (or a given) checkpoint to a model folder")
    e.add_argument("run", help="run folder (uses latest.json) or a checkpoint folder")
    e.add_argument("--to", required=True, help="destination model folder, e.g. models/<name>")
    e.add_argument("--name", default=None, help="model name stored in config.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    args = _build_parser().parse_args(argv)
    if args.command == "prepare":
        meta = prepare(args.corpus, args.out, args.tokenizer, vocab_size=args.vocab_size,
                       val_fraction=args.val_fraction, seed=args.seed)
        print(json.dumps({k: v for k, v in meta.items() if k != "val_documents"}, indent=2))
        return 0
    if args.command == "fit":
        values = vars(args)
        model = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model.") and v is not None}
        kwargs = {fld.name: values[fld.name] for fld in dataclasses.fields(TrainConfig)
                  if fld.name in values and fld.name != "model"}
        cfg = TrainConfig(**kwargs, model=model)
        summary = train(cfg, resume=not args.no_resume)
        print(json.dumps(summary, indent=2))
        return 0
    if args.command == "export":
        run = Path(args.run)
        ckpt = latest_checkpoint(run) or run
        dest = export_model(ckpt, args.to, name=args.name)
        print(f"exported {ckpt} -> {dest}")
        return 0
    return 2


__all__ = [
    "BatchSchedule",
    "TokenData",
    "TrainConfig",
    "Windows",
    "export_model",
    "lr_at",
    "main",
    "prepare",
    "train",
    "write_token_files",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
