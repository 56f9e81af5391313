"""What a dashboard served to other people may read and spend: its options, and the checks behind them.

`interp dashboard` and the app (``streamlit run apps/dashboard.py -- OPTIONS``) share one set of options
(:func:`add_serving_arguments`): the folders a browser user may read from (``--data-dir``, plus the model
zoo), whether to listen beyond this machine (``--allow-remote``), and per-request limits — corpus bytes read,
tokens scanned, model parameters built, seconds a scan may run, prompt tokens an attribution graph traces.
Each limit, when it bites, says what was cut and which flag raises it.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from interp.argtypes import positive_int
from interp.errors import InterpError
from interp.io import atomic_write_bytes

__all__ = ["add_serving_arguments", "cap_text", "check_host", "check_model_size", "corpus_prefix",
           "estimate_parameters", "is_loopback", "sae_parameters", "serving_argv", "time_limit"]

# Defaults for a server shared by a few people: a scan stays well under a minute on a small CPU model.
MAX_CORPUS_MB = 32
MAX_SCAN_TOKENS = 65_536
MAX_MODEL_PARAMS = 500_000_000
SCAN_SECONDS = 60
MAX_GRAPH_TOKENS = 64  # an attribution graph's cost grows with the tokens traced (features x backward passes)


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """The dashboard's serving options (the CLI shows them; the app reads them after ``--``)."""
    p.add_argument("--data-dir", action="append", default=[], metavar="DIR",
                   help="a folder whose files browser users may scan or load (repeatable; besides the model zoo "
                        "and their own uploads, nothing else is read)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than this machine (anyone who reaches the port can use the dashboard)")
    p.add_argument("--max-corpus-mb", type=positive_int, default=MAX_CORPUS_MB, metavar="MB",
                   help=f"bytes of a corpus read per scan (default {MAX_CORPUS_MB} MB; a longer text file is cut)")
    p.add_argument("--max-scan-tokens", type=positive_int, default=MAX_SCAN_TOKENS, metavar="N",
                   help=f"tokens one scan may score (default {MAX_SCAN_TOKENS})")
    p.add_argument("--max-model-params", type=_count, default=MAX_MODEL_PARAMS, metavar="N",
                   help=f"largest model (or SAE) a user's folder may build, estimated from its config before "
                        f"building (default {MAX_MODEL_PARAMS:.0e})")
    p.add_argument("--scan-seconds", type=positive_int, default=SCAN_SECONDS, metavar="S",
                   help=f"wall time one scan may take before it is stopped (default {SCAN_SECONDS})")
    p.add_argument("--max-graph-tokens", type=positive_int, default=MAX_GRAPH_TOKENS, metavar="N",
                   help=f"prompt tokens one attribution graph traces (default {MAX_GRAPH_TOKENS}; a longer prompt "
                        "keeps its last N)")


def _count(text: str) -> int:
    """A positive whole number, also written like 5e8."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v >= 1 and v.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a positive whole number such as 500000000 or 5e8; given {text!r}")
    return int(v)


def serving_argv(ns: argparse.Namespace) -> list[str]:
    """``ns``'s serving options as arguments for the app (after ``--``)."""
    argv = [a for d in ns.data_dir for a in ("--data-dir", str(Path(d).expanduser().resolve()))]
    if ns.allow_remote:
        argv.append("--allow-remote")
    for flag in ("max_corpus_mb", "max_scan_tokens", "max_model_params", "scan_seconds", "max_graph_tokens"):
        argv += ["--" + flag.replace("_", "-"), str(getattr(ns, flag))]
    return argv


def is_loopback(host: str) -> bool:
    host = str(host).strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> str | None:
    """None for a loopback address; a warning to print when ``allow_remote``; else InterpError naming the flag."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise InterpError(f"--host {host}: listens beyond this machine, so anyone who reaches the port can use the "
                          "dashboard; pass --allow-remote to do that (it reads only the model zoo and --data-dir).")
    return (f"warning: --host {host}: the dashboard is reachable from other machines, without login; it reads "
            "the model zoo, --data-dir and uploads only. Put it behind an authenticating proxy for untrusted networks.")


# ----------------------------------------------------------------------------------------------------
# model size


_SIZE_KEYS = {  # our config.json's names first, then transformers' spellings
    "layers": ("n_layers", "num_hidden_layers", "n_layer", "num_layers"),
    "d_model": ("d_model", "hidden_size", "n_embd"),
    "d_mlp": ("d_mlp", "intermediate_size", "n_inner", "ffn_dim"),
    "vocab": ("d_vocab", "vocab_size"),
    "ctx": ("n_ctx", "max_position_embeddings", "n_positions"),
    "experts": ("n_experts", "num_experts", "num_local_experts"),
}


def estimate_parameters(config: dict) -> int:
    """Parameters a decoder with this config.json (ours or transformers') builds, from its sizes alone.

    An upper-bound sketch, not a count: embeddings and (untied) unembedding, a position table, and per
    layer four d_model² attention matrices plus three d_model x d_mlp MLP matrices per expert. Good enough to
    refuse a config that would allocate for minutes before anything is built."""
    if isinstance(config.get("text_config"), dict):  # a multimodal config: the decoder's sizes live there
        config = {**config, **config["text_config"]}
    size = {}
    for what, keys in _SIZE_KEYS.items():
        v = next((config[k] for k in keys if config.get(k) is not None), None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise InterpError(f"config.json: {next(k for k in keys if k in config)} must be a non-negative "
                              f"integer; given {v!r:.40}")
        size[what] = v
    d = size["d_model"] or 0
    d_mlp = size["d_mlp"] if size["d_mlp"] is not None else 4 * d
    per_layer = 4 * d * d + 3 * d * d_mlp * max(1, size["experts"] or 1)
    return 2 * (size["vocab"] or 0) * d + (size["ctx"] or 0) * d + (size["layers"] or 0) * per_layer


def check_model_size(folder: Path, n_bytes: int, max_params: int, label: str) -> int:
    """Refuse, before building, a folder whose config.json (or weight files, ``n_bytes`` on disk) means more
    than ``max_params`` parameters; returns the estimate."""
    cfg_file = Path(folder) / ("cfg.json" if (Path(folder) / "cfg.json").is_file() else "config.json")
    try:
        with open(cfg_file, encoding="utf-8") as f:
            config = json.loads(f.read(1 << 20))  # a config is a few kB: a huge one is not a config
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise InterpError(f"{label}: the folder has no readable config.json.") from None
    if not isinstance(config, dict):
        raise InterpError(f"{label}: config.json must hold a JSON object.")
    n = max(estimate_parameters(config), sae_parameters(config), n_bytes // 4)
    if n > max_params:
        raise InterpError(f"{label}: the model would have about {n:.2e} parameters (from its config and files); "
                          f"this dashboard builds at most {max_params:.2e} (interp dashboard --max-model-params).")
    return n


def sae_parameters(cfg: dict) -> int:
    """An SAE's encoder and decoder (SAELens' cfg.json: d_in, d_sae); a cross-layer transcoder's (``n_layers``:
    sizes per layer, its decoder stored ``[n_layers, d_sae, n_layers, d_in]``)."""
    d_in, d_sae, n = cfg.get("d_in"), cfg.get("d_sae"), cfg.get("n_layers", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (d_in, d_sae, n)):
        return 0
    return n * (d_in * d_sae + d_in + d_sae) + n * n * d_sae * d_in


# ----------------------------------------------------------------------------------------------------
# corpus bytes


def corpus_prefix(path: Path, n_bytes: int, is_dir: bool, max_bytes: int, scratch: Path, label: str):
    """``(path, None)`` when the corpus (``n_bytes`` on disk) fits in ``max_bytes``. A longer text or JSONL file:
    a copy of its first ``max_bytes`` in ``scratch`` (cut at the last newline, so no JSONL row is cut in half;
    else at a UTF-8 character boundary) and a note saying what was cut. A longer folder or Parquet file (which
    cannot be cut) is refused."""
    if n_bytes <= max_bytes:
        return path, None
    flag = f"interp dashboard --max-corpus-mb {max(1, max_bytes // 10**6)}"
    if is_dir or path.suffix.lower() == ".parquet":
        raise InterpError(f"{label}: holds {n_bytes / 1e6:.1f} MB; a scan reads at most {max_bytes / 1e6:.1f} MB "
                          f"({flag}). Give a smaller folder, or one text or JSONL file (its beginning is read).")
    with open(path, "rb") as f:
        head = f.read(max_bytes)
    cut = head.rfind(b"\n")
    if cut > 0:
        head = head[: cut + 1]
    else:  # one long line: drop a multi-byte character the cut split
        end = len(head)
        while end and (head[end - 1] & 0xC0) == 0x80:
            end -= 1
        head = head[: end - 1] if end and head[end - 1] >= 0xC0 else head[:end]
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = hashlib.sha256(f"{path}\0{n_bytes}\0{path.stat().st_mtime_ns}\0{max_bytes}".encode()).hexdigest()[:24]
    out = scratch / key / path.name  # the reader names the corpus after its file
    out.parent.mkdir(mode=0o700, exist_ok=True)
    atomic_write_bytes(out, head)  # concurrent sessions write the same bytes: the last rename wins, whole
    return out, f"read the first {len(head) / 1e6:.1f} MB of {n_bytes / 1e6:.1f} MB ({flag})"


def cap_text(text: str, max_bytes: int, what: str) -> tuple[str, str | None]:
    """``text`` cut to ``max_bytes`` of UTF-8 (at a character boundary), and a note when it was cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text, None
    kept = data[:max_bytes].decode("utf-8", "ignore")  # only the character the cut split is dropped
    return kept, (f"{what} was cut to its first {max_bytes / 1e6:.1f} MB of {len(data) / 1e6:.1f} MB "
                  f"(interp dashboard --max-corpus-mb)")


# ----------------------------------------------------------------------------------------------------
# wall time


@contextmanager
def time_limit(model, seconds: float, what: str = "scan"):
    """Stop forward passes of ``model`` started by this thread once ``seconds`` have passed (InterpError).

    The check runs before the model and before each of its blocks, so a scan stops within one block's time.
    Other threads (other users of the same cached model) are not affected."""
    owner, deadline = threading.get_ident(), time.monotonic() + seconds

    def check(module, args):
        if threading.get_ident() == owner and time.monotonic() > deadline:
            raise InterpError(f"{what}: stopped at the {seconds:g} s limit (interp dashboard --scan-seconds); "
                              "scan fewer tokens.")

    modules = [model, *getattr(model, "blocks", [])]
    handles = [m.register_forward_pre_hook(check) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
