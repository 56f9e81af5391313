"""The `interp` command (subcommands grow with the project; see `interp --help`)."""

from __future__ import annotations

import argparse
import sys


def _generate(args) -> int:
    import interp
    from interp.generate import generate

    model = interp.load(args.model)
    out = generate(model, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed)
    print(model.to_string(out[0]) if model.tokenizer is not None else out[0].tolist())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description="Ask a decoder-only transformer why it predicts what it predicts.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="sample a continuation", description="Example: interp generate 'Once upon a time' --temperature 0.8")
    g.add_argument("prompt")
    g.add_argument("--model", default=None, help="zoo name or folder (default: the shipped model)")
    g.add_argument("--max-new-tokens", type=int, default=30)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from interp.errors import InterpError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InterpError as e:
        print(f"interp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
