"""The `interp` command: reports, probes, the dashboard, sampling, training, benchmarks and the model zoo.

Every subcommand has ``--help`` with an example. Bad input (an :class:`~interp.errors.InterpError`)
prints one line and exits with status 2, never a traceback; Ctrl-C exits with 130 and leaves no
half-written file (outputs are written atomically, at the end).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from interp.argtypes import (
    OneLineParser,
    check_utf8_argv,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    seed,
)

ROOT = Path(__file__).resolve().parents[1]  # the source checkout (apps/, benchmarks/, models/ live here)
DASHBOARD = ROOT / "apps" / "dashboard.py"
BENCHMARKS = ROOT / "benchmarks"

_RAW = argparse.RawDescriptionHelpFormatter


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# ----------------------------------------------------------------------------------------------------
# report


def _report(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from interp.report.data import STAGES, ReportOptions, collect_report
    from interp.report.inputs import cap_count, check_device, check_prompts_fit, load_model, read_corpus
    from interp.report.output import check_writable
    from interp.report.render import format_for, write_report

    fmt = format_for(args.out, args.format)
    out = args.out
    if out is None:
        out = "report.md" if fmt == "md" else "report.html"
    check_writable(out, args.force)  # before the analysis, not after it
    check_device(args.device)
    check_prompts_fit(args.model, [args.prompt])  # a prompt longer than n_ctx: said now, not after loading
    corpus = None if args.corpus == "none" else args.corpus
    if corpus != "default" and corpus is not None:  # a wrong split or column fails before the model loads
        corpus = read_corpus(None, corpus, split=args.corpus_split, field=args.corpus_field)
    from interp.progress import StepLine, progress_wanted

    err = Console(stderr=True)
    steps = ["loading model", *STAGES, "writing"]
    show_bar = not args.quiet and progress_wanted()
    line = [StepLine("", enabled=False)]  # load_model says its own line
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not show_bar) as bar:
        task = bar.add_task(steps[0], total=len(steps))

        def stage(name: str) -> None:  # a bar on a terminal; in a log, a line for each stage that takes 2 s
            bar.update(task, description=name, completed=steps.index(name))
            line[0].done()
            line[0] = StepLine(f"report: {name}", enabled=not args.quiet and not show_bar)

        model = load_model(args.model, device=args.device)
        cfg = model.cfg
        options = ReportOptions(
            k_next=cap_count(args.k, int(cfg.d_vocab), "--k", "tokens in the vocabulary"),
            k_neurons=cap_count(args.neurons, int(cfg.n_layers * cfg.d_mlp), "--neurons", "MLP neurons"),
            n_pattern_heads=cap_count(args.heads, int(cfg.n_layers * cfg.n_heads), "--heads", "attention heads"),
            max_pairs=args.max_pairs, superposition_sets=tuple(args.sets), seed=args.seed,
            corpus=corpus, corpus_split=args.corpus_split if corpus == "default" else None,
            corpus_field=args.corpus_field if corpus == "default" else None, sae=args.sae, n_sae_cards=args.sae_cards,
            transcoders=args.transcoders, max_graph_tokens=args.max_graph_tokens)
        data = collect_report(model, args.prompt, options, progress=stage)
        stage("writing")
        path = write_report(data, out, fmt=fmt, force=args.force, plotly=args.plotly)
        bar.update(task, completed=len(steps))
        line[0].done()
    s = data.summary()
    if not args.quiet:
        from interp.io import is_stream

        # the report itself may be on stdout (--out -): the summary line then goes to stderr
        where = sys.stderr if is_stream(out) else sys.stdout
        size = "" if is_stream(out) else f", {path.stat().st_size / 1e6:.1f} MB"
        print(f"wrote {out} ({fmt}{size}): {s['n_tokens']} tokens, "
              f"next token {s['predicted']!r} p={s['probability']:.3f}", file=where)
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="write one self-contained HTML (or Markdown) report for a prompt", formatter_class=_RAW,
        description="Run every analysis on a prompt and write one file: model, tokenization, next-token "
                    "distribution, logit lens, attention heads, neurons and superposition (with --sae, "
                    "sparse-autoencoder features too). The HTML opens offline (plotly is embedded).",
        epilog=_examples('interp report "The Eiffel Tower is in the city of" --out report.html',
                         'interp report "Once upon a time" --format md --out report.md --model models/NAME',
                         'interp report "The LORD is my" --corpus data/wiki --corpus-split validation --corpus-field text',
                         'interp report "And God said" --sae default --out report.html',
                         'interp report "And God said" --transcoders default --out report.html'))
    p.add_argument("prompt", help="the text to analyse")
    p.add_argument("--out", default=None, help="output file, or - for stdout (default report.html, or report.md with --format md); a symbolic link is written through")
    p.add_argument("--format", choices=("html", "md"), default=None, help="default: from --out's suffix, else html")
    p.add_argument("--model", default=None, help="zoo name or model folder (default: the shipped model)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--k", type=positive_int, default=10, help="next-token candidates and logit-lens depth (default 10)")
    p.add_argument("--neurons", type=positive_int, default=10, help="neurons per ranking (default 10)")
    p.add_argument("--heads", type=positive_int, default=4, help="notable heads whose patterns are drawn (default 4)")
    p.add_argument("--max-pairs", type=positive_int, default=20_000, help="direction pairs per superposition set")
    p.add_argument("--sets", nargs="+", default=["W_E", "W_U", "W_in", "W_out"], metavar="SET",
                   help="superposition direction sets (default W_E W_U W_in W_out)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--corpus", default="default", metavar="SOURCE",
                   help="what the neuron pages' top examples are scanned over: a text, JSONL or Parquet file, a "
                        "folder of them, a saved datasets folder (save_to_disk), or hf:NAME[:CONFIG]:SPLIT where a "
                        "hub is reachable (default: the model folder's heldout.txt; 'none' skips the scan)")
    p.add_argument("--corpus-split", default=None, metavar="SPLIT",
                   help="the split of a saved DatasetDict (e.g. validation; needed when it has several)")
    p.add_argument("--corpus-field", default=None, metavar="COLUMN",
                   help="the text column of a JSONL/Parquet/datasets corpus (default text)")
    p.add_argument("--sae", default=None, metavar="FOLDER",
                   help="add a sparse-autoencoder section: an SAE folder (interp sae train --out, or SAELens' layout), "
                        "or 'default' (the one shipped in the model folder's sae/)")
    p.add_argument("--sae-cards", type=positive_int, default=5, metavar="N",
                   help="feature cards in the SAE section: the N features most active on the prompt (default 5)")
    p.add_argument("--transcoders", default=None, metavar="FOLDER",
                   help="add an attribution-graph section: a folder of per-layer transcoders (interp sae train "
                        "--transcoder --out) or of a cross-layer one, 'default' (the ones shipped in the model "
                        "folder's transcoders/) or 'clt' (its cross-layer transcoder, clt/)")
    p.add_argument("--max-graph-tokens", type=positive_int, default=64, metavar="N",
                   help="the attribution graph traces the prompt's last N tokens (default 64)")
    p.add_argument("--plotly", choices=("inline", "shared"), default="inline",
                   help="inline: one self-contained file (default); shared: one plotly-<version>.min.js beside the "
                        "reports in --out's folder, each report a few hundred kB")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    p.set_defaults(func=_report)


# ----------------------------------------------------------------------------------------------------
# child processes (the dashboard's Streamlit server, benchmarks)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send the child SIGTERM when we die, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run_child(cmd: list[str], cwd: str | Path | None = None) -> int:
    """Run ``cmd`` and return its exit code; it never outlives us.

    ``kill`` (SIGTERM) or a closed terminal (SIGHUP) of `interp` is passed on to the child and waited for:
    a Streamlit server left behind would keep serving the port. Ctrl-C reaches the child through the terminal's
    process group; we wait for it to finish and return 130."""
    import signal

    # the CLI has no threads of its own at this point, which is what preexec_fn needs to be safe
    death_signal = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(cmd, cwd=cwd, preexec_fn=death_signal)  # noqa: PLW1509

    def forward(signum, frame):
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # a child ended by a signal we forwarded: report it as the shell would (128 + signal)
    return 128 - code if code < 0 else code


# ----------------------------------------------------------------------------------------------------
# dashboard


def _dashboard(args) -> int:
    from interp.errors import InterpError
    from interp.report.serving import check_host, serving_argv

    warning = check_host(args.host, args.allow_remote)  # before anything starts listening
    for d in args.data_dir:
        if not Path(d).expanduser().is_dir():
            raise InterpError(f"--data-dir: {d!r} is not a folder.")
    if not DASHBOARD.is_file():
        raise InterpError(f"the dashboard app is missing at {DASHBOARD}; run interp from a source checkout.")
    if warning:
        print(f"interp dashboard: {warning}", file=sys.stderr)
    cmd = [sys.executable, "-m", "streamlit", "run", str(DASHBOARD), "--server.address", args.host,
           "--server.port", str(args.port), "--server.headless", "false" if args.browser else "true",
           "--browser.gatherUsageStats", "false", "--server.maxUploadSize", str(args.max_corpus_mb)]
    extra = serving_argv(args)
    if args.model:
        extra += ["--model", args.model]
    if args.prompt:
        extra += ["--prompt", args.prompt]
    if extra:
        cmd += ["--", *extra]
    print(f"interp dashboard: http://{args.host}:{args.port}  (Ctrl-C stops it)", file=sys.stderr)
    return run_child(cmd)


def _add_dashboard(sub) -> None:
    p = sub.add_parser(
        "dashboard", help="start the Streamlit dashboard", formatter_class=_RAW,
        description="Start the interactive dashboard (apps/dashboard.py) with Streamlit: overview and sampling, "
                    "attention, neurons, superposition, logit lens, report download.",
        epilog=_examples("interp dashboard", "interp dashboard --port 8600 --model models/NAME --prompt 'Hello'",
                         "interp dashboard --data-dir data/ --max-scan-tokens 16384",
                         "interp dashboard --host 0.0.0.0 --allow-remote --data-dir /srv/corpora",
                         "streamlit run apps/dashboard.py -- --data-dir data/   (the same app)"))
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; another needs --allow-remote)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument("--model", default=None, help="model preselected in the sidebar (zoo name or folder)")
    p.add_argument("--prompt", default=None, help="prompt preselected in the sidebar")
    p.add_argument("--browser", action="store_true", help="open a browser window")
    from interp.report.serving import add_serving_arguments

    add_serving_arguments(p)
    p.set_defaults(func=_dashboard)


# ----------------------------------------------------------------------------------------------------
# probe / train / bench: delegate the rest of the command line


def _probe(args) -> int:
    from interp.report.probes import PROBES
    from interp.report.probes import main as probe_main

    if args.name is None:
        print("probes: " + ", ".join(PROBES) + "\nrun `interp probe NAME --help` for one probe's options.")
        return 0
    if args.name not in PROBES:
        from interp.errors import InterpError

        raise InterpError(f"probe: unknown probe {args.name!r}; choose from {list(PROBES)}.")
    return probe_main(args.name, args.rest, prog=f"interp probe {args.name}")


def _add_probe(sub) -> None:
    from interp.report.probes import PROBES

    listing = "\n".join(f"  {name:<14} {p.summary}" for name, p in PROBES.items())
    p = sub.add_parser(
        "probe", help="run one analysis and print tables (same as python probes/NAME.py)", formatter_class=_RAW,
        description=f"Run one probe. Probes:\n{listing}\n\n`interp probe NAME --help` lists a probe's options; "
                    "every probe takes --model, --prompts FILE, --json/--csv/--html PATH and --force.",
        epilog=_examples('interp probe attention "When Mary and John went to the store, John gave" --layer 0 --head 1',
                         'interp probe logit_lens "The capital of France is" --k 3 --json lens.json',
                         "interp probe superposition --toy --sparsity 0.95"))
    p.add_argument("name", nargs="?", default=None, help="probe name (see above)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the probe's own arguments")
    p.set_defaults(func=_probe)


def _train(args) -> int:
    from interp.train import main as train_main

    return train_main(args.rest)


def _add_delegate(sub, name: str, help: str, description: str, examples: tuple, rest: str, func) -> None:
    """A subcommand whose arguments all go to another module's own parser (``interp NAME COMMAND ...``)."""
    p = sub.add_parser(name, help=help, formatter_class=_RAW, description=description, epilog=_examples(*examples))
    p.add_argument("rest", nargs=argparse.REMAINDER, help=rest)
    p.set_defaults(func=func)


def _add_train(sub) -> None:
    _add_delegate(
        sub, "train", "tokenize a corpus, train a model, export it to the zoo (interp.train)",
        "Training, delegated to interp.train: `prepare` (tokenizer + token files), `fit` (train or resume), "
        "`export` (write a model folder). `interp train COMMAND --help` lists each command's options.",
        ("interp train prepare data/corpus/corpus.jsonl --tokenizer data/tokenizer.json --out data/tokens",
         "interp train fit --data data/tokens --out runs/demo --steps 2000 --d-model 128 --positional rotary",
         "interp train export runs/demo --to models/my-model"),
        "arguments for interp.train (prepare | fit | export ...)", _train)


def _sae(args) -> int:
    from interp.report.sae import main as sae_main

    return sae_main(args.rest)


def _add_sae(sub) -> None:
    _add_delegate(
        sub, "sae", "sparse autoencoders: train, eval, features (interp.analysis.sae)",
        "Sparse autoencoders on a hook's activations (TopK, ReLU+L1, JumpReLU; SAELens' format): `train` "
        "(checkpoints resume, --time-budget), `eval` (L0, variance explained, CE loss recovered, dead/dense "
        "latents), `features` (top contexts, logit effects). `interp sae COMMAND --help` lists each command's options.",
        ("interp sae train --out runs/sae --time-budget 540", "interp sae eval --sae runs/sae",
         "interp sae features --sae runs/sae --feature 3 17"),
        "train | eval | features and their options", _sae)


def _circuit(args) -> int:
    from interp.report.circuit import run

    return run(args)


def _add_circuit(sub) -> None:
    p = sub.add_parser(
        "circuit", help="attribution graph of a prompt through transcoders (interp.analysis.circuits.graph)",
        formatter_class=_RAW,
        description="Replace every MLP by its transcoder, freeze attention and norms, and draw the prompt's "
                    "computation as a pruned graph of direct effects between features, errors, tokens and the top "
                    "logits (Ameisen et al. 2025). Writes an offline HTML page and/or the graph's JSON.",
        epilog=_examples('interp circuit "And God said" --transcoders default --out graph.html',
                         'interp circuit "It is a truth universally" --json graph.json --node-threshold 0.6'))
    p.add_argument("prompt", help="the prompt (its last position's next-token logits are the graph's targets)")
    p.add_argument("--transcoders", default="default",
                   help="folder of per-layer transcoders (interp sae train --transcoder --out) or of a cross-layer "
                        "one (--cross-layer), 'default': the model folder's transcoders/, or 'clt': its clt/")
    p.add_argument("--model", default=None, help="zoo name or model folder (default: the shipped model)")
    p.add_argument("--out", default=None, help="HTML file to write (e.g. graph.html)")
    p.add_argument("--json", default=None, help="also write the graph as JSON (documented in interp.analysis.circuits.graph)")
    p.add_argument("--node-threshold", type=nonnegative_float, default=0.8, help="cumulative node influence kept (0.8)")
    p.add_argument("--edge-threshold", type=nonnegative_float, default=0.98, help="cumulative edge influence kept (0.98)")
    p.add_argument("--max-logits", type=positive_int, default=10, help="most logit nodes (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="targets per backward pass (default 32)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda")
    p.add_argument("--force", action="store_true", help="overwrite existing output")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=_circuit)


def _benchmarks() -> list[str]:
    if not BENCHMARKS.is_dir():
        return []
    return sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def _bench(args) -> int:
    from interp.errors import InterpError

    names = _benchmarks()
    if args.name is None:
        print("benchmarks: " + (", ".join(names) if names else f"(none in {BENCHMARKS})"))
        return 0
    if args.name not in names:
        raise InterpError(f"bench: no benchmark {args.name!r} in {BENCHMARKS}; choose from {names or '(none)'}.")
    return run_child([sys.executable, str(BENCHMARKS / f"{args.name}.py"), *args.rest], cwd=ROOT)


def _add_bench(sub) -> None:
    names = _benchmarks()
    p = sub.add_parser(
        "bench", help="run a benchmark script from benchmarks/ by name", formatter_class=_RAW,
        description="Run benchmarks/NAME.py with the remaining arguments (from the repository root). "
                    f"Available: {', '.join(names) if names else '(none yet)'}. Without NAME, list them.",
        epilog=_examples("interp bench", f"interp bench {names[0] if names else 'attention'} --help"))
    p.add_argument("name", nargs="?", default=None, help="benchmark name (file stem in benchmarks/)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    p.set_defaults(func=_bench)


# ----------------------------------------------------------------------------------------------------
# generate / models


def _generate(args) -> int:
    from interp.generate import generate
    from interp.report.inputs import check_prompts_fit, encode_prompt, load_model
    from interp.report.probes import printable

    check_prompts_fit(args.model, [args.prompt])
    model = load_model(args.model, device=args.device)
    tokens = encode_prompt(model, args.prompt)
    for i in range(args.samples):
        out = generate(model, tokens, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed + i)
        print(printable(model.to_string(out[0])))  # a sampled ESC sequence must not drive the terminal
        if args.samples > 1 and i < args.samples - 1:
            print("---")
    return 0


def _add_generate(sub) -> None:
    g = sub.add_parser(
        "generate", help="sample a continuation", formatter_class=_RAW,
        description="Continue a prompt with the KV-cached sampler: temperature (0 = greedy), top-k, top-p, min-p.",
        epilog=_examples("interp generate 'Once upon a time' --temperature 0.8",
                         "interp generate 'The capital of France is' --temperature 0 --max-new-tokens 5",
                         "interp generate 'Hello' --top-p 0.9 --samples 3 --seed 1"))
    g.add_argument("prompt")
    g.add_argument("--model", default=None, help="zoo name or folder (default: the shipped model)")
    g.add_argument("--device", default=None, help="torch device, e.g. cuda")
    g.add_argument("--max-new-tokens", type=positive_int, default=30)
    g.add_argument("--temperature", type=nonnegative_float, default=1.0, help="0 = greedy (default 1)")
    g.add_argument("--top-k", type=positive_int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--samples", type=positive_int, default=1, help="continuations, seeds seed..seed+n-1 (default 1)")
    g.add_argument("--seed", type=seed, default=0)
    g.set_defaults(func=_generate)


def card_line(folder: Path) -> str:
    """The first line of a model card (README.md), without Markdown heading marks."""
    card = folder / "README.md"
    if not card.is_file():
        return "(no model card)"
    for line in card.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip()
    return "(empty model card)"


def _families() -> int:
    from interp.loading.families import FAMILIES

    names: dict[str, list[str]] = {}
    for arch, family in FAMILIES.items():
        names.setdefault(family.name, []).append(arch)
    width = max(len(n) for n in names)
    print("Native families (converted into interp's model: fused/lazy attention, weight processing, every analyzer):")
    for name, archs in sorted(names.items(), key=lambda kv: kv[0].lower()):
        print(f"  {name:<{width}}  {', '.join(sorted(archs))}")
    print("Every other transformers causal LM (*ForCausalLM, *LMHeadModel, a multimodal *ForConditionalGeneration's "
          "text decoder; attention, state-space, recurrent or hybrid) opens through the universal path: its modules "
          "wrapped with TransformerLens hook names (model.capabilities lists what it offers). "
          "interp.load(..., path='universal') forces it; path='native' refuses a class without a row.")
    return 0


def _models(args) -> int:
    from interp.zoo import ZOO, default_model_name, zoo_context, zoo_models  # no torch: listing is instant

    if args.families:
        return _families()
    names = zoo_models()
    default = default_model_name()
    if not names:
        print(f"no models in {ZOO} yet; interp.load() gives {default!r}, a small randomly initialised model.")
        return 0
    width = max(len(n) for n in names)
    for n in names:
        mark = "*" if n == default else " "
        print(f"{mark} {n:<{width}}  n_ctx {zoo_context(n) or '?':<5}  {card_line(ZOO / n)}")
    print(f"(* = default; load with --model NAME or interp.load('NAME'); zoo folder {ZOO})")
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo with each model card's first line", formatter_class=_RAW,
                       description="List the models shipped in models/ (the default is marked *).",
                       epilog=_examples("interp models", "interp models --families",
                                        "interp report 'Hello' --model NAME"))
    p.add_argument("--families", action="store_true",
                   help="list the transformers architectures interp converts natively (all others open universally)")
    p.set_defaults(func=_models)


# ----------------------------------------------------------------------------------------------------
# scan: corpus-scale scans, one process or many (torchrun)


def _scan_model(args):
    from interp.data.distributed import init_from_env
    from interp.report.inputs import attach_byte_tokenizer, check_device, load_model

    check_device(args.device)
    init_from_env()  # under torchrun: one rank per process (gloo on CPU, NCCL on GPU)
    device = args.device
    if device is None and os.environ.get("LOCAL_RANK") is not None:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{os.environ['LOCAL_RANK']}"
    if args.device_map is not None:
        import interp

        model = interp.load(args.model, device_map=args.device_map, offload_folder=args.offload_folder).eval()
        return attach_byte_tokenizer(model)
    return load_model(args.model, device=device)


def _scan_corpus(args):
    from interp.data import Corpus
    from interp.io import check_input_path

    check_input_path(args.corpus, "corpus")  # a FIFO or device would block or never end
    return Corpus.from_path(args.corpus, text_field=args.text_field, doc_sep=args.doc_sep)


def _scan(args) -> int:
    from interp.data.distributed import is_main
    from interp.errors import InterpError
    from interp.io import check_output_folder

    out = Path(args.out)
    if args.kind == "stats":
        from interp.io import is_stream
        from interp.report.output import check_writable

        if is_stream(out):  # the table is renamed into place at the end: it needs a file
            raise InterpError(f"--out: the statistics table is written atomically to a file; given {str(out)!r}, "
                              "a pipe or device")
        check_writable(out, args.force)
        if out.suffix not in (".csv", ".json", ".parquet"):
            raise InterpError(f"--out: the statistics table is written as .csv, .json or .parquet; given {str(out)!r}")
    else:  # a folder: refuse an existing file (or a name that cannot be one) before any work
        check_output_folder(out)
    if args.kind == "neurons" and (out / "meta.json").exists() and not args.force:
        raise InterpError(f"--out: {str(out)!r} holds a finished scan; pass --force to scan again and replace it")
    if args.kind == "activations" and (out / "manifest.json").exists() and not args.force:
        raise InterpError(f"--out: {str(out)!r} holds an activation dataset; pass --force to replace it")
    corpus = _scan_corpus(args)  # before the model: a bad corpus is refused in a second, not after loading
    model = _scan_model(args)
    overlap = args.overlap if args.overlap is not None else (args.seq_len or int(model.cfg.n_ctx)) // 4
    common = {"seq_len": args.seq_len, "overlap": overlap, "batch_size": args.batch_size,
              "shard_docs": args.shard_docs, "progress": not args.quiet}
    if args.kind == "neurons":
        from interp.analysis.neurons import scan_top_contexts
        from interp.report.inputs import cap_count, resolve_index

        layers = None if args.layers is None else [
            resolve_index(v, int(model.cfg.n_layers), "--layers", "layers") for v in args.layers]
        window = cap_count(args.window, (args.seq_len or int(model.cfg.n_ctx)) - 1, "--window",
                           "tokens a window holds before its last")
        df = scan_top_contexts(model, corpus, layers=layers, k=args.k, window=window, after=args.after,
                               cache_path=out, recompute=args.force, **common)
        if is_main() and not args.quiet:
            best = df[df["rank"] == 1].sort_values("activation", ascending=False).head(args.show)
            from interp.report.probes import printable

            best = best.assign(context=best.context.map(printable))  # corpus text may hold terminal control bytes
            print(best[["layer", "neuron", "activation", "doc", "position", "context"]].to_string(index=False))
            print(f"wrote {out} ({len(df)} rows: top {args.k} contexts of {df.groupby(['layer', 'neuron']).ngroups} "
                  "neurons)")
    elif args.kind == "activations":
        from interp.data import write_activation_dataset

        ds = write_activation_dataset(model, corpus, args.hooks, out, dtype=args.dtype, overwrite=args.force, **common)
        if is_main() and not args.quiet:
            print(f"wrote {out}: {len(ds)} rows x hooks {ds.hooks} in {ds.n_shards} shards")
    else:
        from interp.data import activation_stats
        from interp.io import atomic_path

        table = activation_stats(model, corpus, args.hooks, checkpoint_dir=out.parent / f".{out.name}.partial",
                                 **common)
        if is_main():
            with atomic_path(out) as tmp:
                {".csv": lambda: table.to_csv(tmp, index=False), ".json": lambda: table.to_json(tmp, orient="records"),
                 ".parquet": lambda: table.to_parquet(tmp, index=False)}[out.suffix]()
            import shutil

            shutil.rmtree(out.parent / f".{out.name}.partial", ignore_errors=True)
            if not args.quiet:
                print(f"wrote {out}: {len(table)} features, {int(table['count'].iloc[0])} tokens")
    return 0


def _add_scan(sub) -> None:
    p = sub.add_parser(
        "scan", help="corpus-scale scans: neuron top contexts, activation datasets, statistics (torchrun-ready)",
        formatter_class=_RAW,
        description="Stream a corpus (a text/JSONL/Parquet file, a folder of them, or a saved datasets folder) "
                    "through the model in windows that never cross a document boundary. `neurons` finds every "
                    "MLP neuron's top-k contexts; `activations` writes an activation dataset (sharded "
                    "safetensors + manifest.json, read with interp.data.ActivationDataset); `stats` writes "
                    "per-feature mean/std/min/max. An interrupted scan resumes when rerun with the same --out. "
                    "Under `torchrun --nproc-per-node N -m interp scan ...` each process scans every N-th shard "
                    "and rank 0 writes the merged result (the same as one process).",
        epilog=_examples("interp scan neurons models/docs-bible-austen-2l/heldout.txt --out scans/neurons",
                         "torchrun --nproc-per-node 2 -m interp scan neurons corpus/ --out scans/neurons",
                         "interp scan activations corpus.jsonl --hooks resid_post --dtype float16 --out acts/",
                         "interp scan stats corpus/ --hooks mlp.hook_post --out stats.csv"))
    p.add_argument("kind", choices=("neurons", "activations", "stats"), help="what to compute")
    p.add_argument("corpus", help="text / JSONL / Parquet file, a folder of them, or a saved datasets folder")
    p.add_argument("--out", required=True, help="output folder (neurons, activations) or table file (stats)")
    p.add_argument("--model", default=None, help="zoo name or model folder (default: the shipped model)")
    p.add_argument("--device", default=None, help="torch device (default: CPU, or cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--device-map", default=None, help="place a model too large for one device: 'auto'")
    p.add_argument("--offload-folder", default=None, help="where --device-map puts 'disk' weights")
    p.add_argument("--text-field", default="text", help="JSONL/Parquet/datasets column with the text (default text)")
    p.add_argument("--doc-sep", default=None, help="split text files into documents at this string (e.g. '\n\n')")
    p.add_argument("--seq-len", type=positive_int, default=None, help="window length (default: the model's n_ctx)")
    p.add_argument("--overlap", type=nonnegative_int, default=None,
                   help="context tokens each later window of a long document repeats (default seq_len/4)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--shard-docs", type=positive_int, default=64, help="documents per shard: the unit of work and resume (default 64)")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="neurons: layers to scan, 0-based; -1 is the last (default all)")
    p.add_argument("--k", type=positive_int, default=10, help="neurons: contexts per neuron (default 10)")
    p.add_argument("--window", type=nonnegative_int, default=10, help="neurons: tokens shown before the trigger")
    p.add_argument("--after", type=nonnegative_int, default=3, help="neurons: tokens shown after the trigger")
    p.add_argument("--show", type=positive_int, default=10, help="neurons: strongest neurons printed (default 10)")
    p.add_argument("--hooks", nargs="+", default=["resid_post"],
                   help="activations/stats: hook names or per-block suffixes (default resid_post)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="activations: stored dtype (default float32)")
    p.add_argument("--force", action="store_true", help="scan again and replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_scan)


# ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="interp", formatter_class=_RAW,
        description="Ask a decoder-only transformer why it predicts what it predicts.",
        epilog=_examples('interp report "The Eiffel Tower is in the city of" --out report.html',
                         'interp probe attention "When Mary and John went to the store, John gave"',
                         "interp dashboard", "interp models") + "\n\n`interp COMMAND --help` for each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_report, _add_dashboard, _add_probe, _add_generate, _add_train, _add_sae, _add_circuit, _add_scan,
                _add_bench, _add_models):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from interp.errors import InterpError

    argv = list(sys.argv[1:] if argv is None else argv)
    check_utf8_argv(argv)  # undecodable bytes in a prompt or path: one line, not a tokenizer's TypeError
    # `interp probe NAME --help`, `interp train fit --help`, `interp bench NAME --help`: the delegate's own help.
    if len(argv) >= 2 and argv[0] in ("probe", "train", "sae", "bench") and argv[1] not in ("-h", "--help"):
        ns = argparse.Namespace(command=argv[0], name=argv[1], rest=argv[2:])
        if argv[0] in ("train", "sae"):
            ns.rest = argv[1:]
        func = {"probe": _probe, "train": _train, "sae": _sae, "bench": _bench}[argv[0]]
    else:
        ns = build_parser().parse_args(argv)
        func = ns.func
    from interp.progress import silenced

    try:
        with silenced("--quiet" in argv):  # no step lines either
            return int(func(ns) or 0)
    except InterpError as e:
        from interp.report.probes import printable

        print(f"interp: error: {printable(str(e))}", file=sys.stderr)  # it may quote what a file held
        return 2
    except KeyboardInterrupt:
        print("interp: interrupted; no partial output was written.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `interp ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
