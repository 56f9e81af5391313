"""The numbers a report shows, gathered from the analyzers into one small dataclass.

``collect_report`` only *calls* analyzers (``interp.analysis.*``, ``interp.tokenize``) and selects rows
from what they return; the renderers (``interp.report.render``) only format a :class:`ReportData`. Tests
compare a rendered report against the same analyzer calls, so every number on the page is traceable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from interp.errors import InterpError
from interp.report.inputs import encode_prompt, model_summary, read_corpus, str_tokens

__all__ = [
    "NOTABLE_ROLES",
    "STAGES",
    "ReportData",
    "ReportOptions",
    "collect_report",
    "notable_heads",
    "page_neurons",
    "pair_excerpt",
    "pattern_matrix",
    "tokenization_table",
    "view_heads",
]

# The head roles whose best head gets its pattern drawn (entropy is a property, not a role).
NOTABLE_ROLES = ("previous_token", "induction", "duplicate_token", "attention_sink", "local_window")

# Report stages, in order, for progress bars.
STAGES = ("tokenization", "logit lens", "attention", "neurons", "neuron pages", "superposition", "patching",
          "sae features", "attribution graph")


@dataclass
class ReportOptions:
    """Knobs of a report; the defaults keep a report on a small model to a few seconds of CPU."""

    k_next: int = 10  # next-token candidates listed (also the logit lens' k)
    k_neurons: int = 10  # neurons ranked by activation and by contribution
    n_answer_neurons: int = 5  # top contributors whose answer tokens are listed
    k_answers: int = 8  # answer tokens per neuron (each direction)
    n_pattern_heads: int = 4  # notable heads whose patterns are drawn
    superposition_sets: tuple[str, ...] = ("W_E", "W_U", "W_in", "W_out")
    max_pairs: int = 20_000  # direction pairs per set (exact below this)
    hist_pairs: int = 5_000  # pairs sampled for the angle histograms
    seed: int = 0
    # neuron pages: the model's heldout.txt ("default"), a text / JSONL / Parquet file or folder, a saved datasets
    # folder, "hf:NAME[:CONFIG][:SPLIT]", a datasets object or a Corpus (interp.report.inputs.read_corpus), or None
    corpus: object = "default"
    corpus_split: str | None = None  # the split of a dataset dict (needed when it has several)
    corpus_field: str | None = None  # the text column of a table or dataset (default "text")
    k_examples: int = 5  # top-activating examples per neuron page
    max_corpus_tokens: int = 16_384  # corpus tokens scanned for neuron pages (chunks spread over the corpus)
    pattern_window: int = 40  # positions drawn in a pattern heatmap (the last ones; the attention view shows all)
    view_bytes: int = 4_000_000  # attention view budget: one byte per head and causal entry
    patching: bool = True  # causal section: patching on the prompt followed by its own beginning (induction)
    sae: str | None = None  # SAE section: an SAE folder (SAELens layout) or "default" (the model folder's sae/)
    k_sae_features: int = 5  # SAE section: top features listed per token
    n_sae_cards: int = 5  # SAE section: feature cards (the features most active on the prompt)
    # attribution-graph section: a transcoder folder (one per layer) or "default" (the model folder's transcoders/)
    transcoders: str | None = None
    max_graph_tokens: int = 64  # the graph traces the prompt's last N tokens (its cost grows with them)

    def __post_init__(self) -> None:
        for name in ("k_next", "k_neurons", "n_answer_neurons", "k_answers", "n_pattern_heads", "max_pairs", "hist_pairs",
                     "k_examples", "max_corpus_tokens", "pattern_window", "view_bytes", "k_sae_features", "n_sae_cards",
                     "max_graph_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InterpError(f"{name}: must be an integer >= 1; given {v!r}.")
        self.superposition_sets = tuple(self.superposition_sets)


@dataclass
class ReportData:
    """Everything a report shows. DataFrames are analyzer outputs or row selections of them."""

    prompt: str
    options: dict
    model: dict  # model_summary()
    token_ids: list[int]
    str_tokens: list[str]
    tokens: pd.DataFrame  # explain_tokenization: position, token_id, token, bytes, start, end, text_span
    lens: pd.DataFrame  # logit_lens(k=k_next), target="final"
    lens_grid: pd.DataFrame  # summarize_lens(lens): one row per (layer, position)
    next_tokens: pd.DataFrame  # lens rows of the last layer at the last position: the model's own output
    final_by_layer: pd.DataFrame  # lens_grid at the last position: the final prediction's prob by layer
    head_scores: pd.DataFrame  # attention.head_scores
    notable_heads: pd.DataFrame  # the best head per notable role
    patterns: pd.DataFrame  # attention.attention_patterns of view_heads and the notable heads on the prompt
    view_heads: list  # (layer, head) pairs in the interactive attention view: every head when it fits
    neurons: pd.DataFrame  # neurons.top_neurons at the last position, target = predicted token
    neuron_answers: pd.DataFrame  # neurons.neuron_answers(center=True) of every paged neuron (+ layer, neuron)
    neuron_profiles: object  # neurons.NeuronProfiles over the corpus (None without a corpus)
    neuron_prompt: pd.DataFrame  # neurons.neuron_activations on the prompt of every paged neuron (+ layer, neuron)
    corpus_name: str | None  # what the neuron pages scanned
    superposition: pd.DataFrame  # superposition.direction_set_stats
    angle_samples: pd.DataFrame  # superposition.direction_angle_samples (model and random pairs)
    random_pdf: pd.DataFrame  # superposition.random_angle_pdf(d_model)
    extras: dict = field(default_factory=dict)
    # causal section (empty when options.patching is off or the prompt is one token; "notes" says what was cut):
    # "pair" (dict: clean and corrupted text, answer, wrong, position), "heads" and "grid"
    # (causal.activation_patching of hook_z per head and resid_pre per layer x position), "dla"
    # (causal.direct_logit_attribution of the clean prompt), "attribution_r" (float)
    patching: dict = field(default_factory=dict)
    # SAE section (empty without options.sae): interp.report.sae_section.collect_sae_section's dict
    sae: dict = field(default_factory=dict)
    # attribution-graph section (empty without options.transcoders): circuit_section.collect_circuit_section's dict
    circuit: dict = field(default_factory=dict)

    @property
    def predicted_token(self) -> str:
        return str(self.next_tokens.iloc[0]["token"])

    def summary(self) -> dict:
        """A few headline numbers (for the terminal and the dashboard)."""
        top = self.next_tokens.iloc[0]
        return {"prompt": self.prompt, "model": self.model["name"], "n_tokens": len(self.token_ids),
                "predicted": str(top["token"]), "probability": float(top["prob"])}


def tokenization_table(model, prompt: str, tokens: torch.Tensor) -> pd.DataFrame:
    """How the prompt became ``tokens``: ``interp.tokenize.explain_tokenization`` when it applies.

    ``explain_tokenization`` reads a `tokenizers.Tokenizer`; for other tokenizers (or when the model
    prepends a BOS token it does not know about) the table falls back to ids and decoded strings.
    """
    ids = tokens.reshape(-1).tolist()
    strs = str_tokens(model, tokens)
    tok = getattr(model, "tokenizer", None)
    try:
        from tokenizers import Tokenizer

        from interp.tokenize import backend_tokenizer, explain_tokenization

        if isinstance(backend_tokenizer(tok), Tokenizer):
            df = explain_tokenization(tok, prompt)
            extra = len(ids) - len(df)
            if extra >= 0 and df.token_id.tolist() == ids[extra:]:
                if extra:  # BOS (or other prefix) the model adds before the text
                    head = pd.DataFrame({"position": range(extra), "token_id": ids[:extra], "token": strs[:extra],
                                         "bytes": "", "start": 0, "end": 0, "text_span": ""})
                    df = pd.concat([head, df.assign(position=df.position + extra)], ignore_index=True)
                return df
    except InterpError:
        pass
    return pd.DataFrame({"position": range(len(ids)), "token_id": ids, "token": strs})


def page_neurons(top: pd.DataFrame) -> list[tuple[int, int]]:
    """The neurons that get a page: every neuron the neuron tables name (contribution first)."""
    order = pd.concat([top[top.ranked_by == "contribution"], top[top.ranked_by == "activation"]])
    return list(dict.fromkeys((int(r.layer), int(r.neuron)) for r in order.itertuples()))


def view_heads(model, notable: pd.DataFrame, n: int, budget: int) -> list[tuple[int, int]]:
    """Heads for the attention view: all of them when one byte per causal entry fits ``budget``, else as many of the
    notable ones as fit (at least one), so the page stays bounded however long the prompt."""
    cfg = model.cfg
    every = [(layer, head) for layer in range(int(cfg.n_layers)) for head in range(int(cfg.n_heads))]
    per_head = n * (n + 1) // 2
    if len(every) * per_head <= budget:
        return every
    chosen = [(int(r.layer), int(r.head)) for r in notable.itertuples()] or every[:1]
    return chosen[:max(1, budget // per_head)]


def notable_heads(scores: pd.DataFrame, n: int) -> pd.DataFrame:
    """The highest-scoring head of each notable role, best first, at most ``n`` distinct heads."""
    rows = []
    for role in NOTABLE_ROLES:
        s = scores[(scores.role == role) & scores.score.notna()]
        if len(s):
            rows.append(s.loc[s.score.idxmax()])
    if not rows:
        return scores.iloc[:0][["role", "layer", "head", "score", "source"]]
    df = pd.DataFrame(rows)[["role", "layer", "head", "score", "source"]].sort_values("score", ascending=False)
    df = df.drop_duplicates(["layer", "head"]).head(n)
    return df.reset_index(drop=True)


# the columns of the sections a universal-path model leaves empty (what the analyzers return)
_EMPTY = {
    "neurons": pd.DataFrame(columns=["layer", "neuron", "activation", "contribution", "batch", "position",
                                     "target_token", "target_id", "ranked_by", "rank"]),
    "superposition": pd.DataFrame(columns=["set", "layer", "head", "count", "dim", "mean_angle_deg"]),
    "angle_samples": pd.DataFrame(columns=["source", "set", "layer", "head", "cos", "angle_deg"]),
}


def collect_report(model, prompt: str, options: ReportOptions | None = None,
                   progress: Callable[[str], None] | None = None) -> ReportData:
    """Run every analyzer a report needs on ``prompt`` and keep their outputs.

    ``progress(stage)`` is called before each of :data:`STAGES` (for progress bars).
    """
    from interp.analysis import attention, logit_lens, neurons, superposition

    opts = options or ReportOptions()
    step = progress or (lambda stage: None)
    sae = None
    if opts.sae is not None:  # checked before any analysis runs: a bad --sae fails at once
        from interp.report.sae_section import load_report_sae

        sae = load_report_sae(model, opts.sae)
    transcoders = None
    if opts.transcoders is not None:  # likewise a bad --transcoders
        from interp.report.circuit import load_graph_transcoders

        transcoders = load_graph_transcoders(model, opts.transcoders)

    step("tokenization")
    tokens = encode_prompt(model, prompt)
    # the corpus is checked now (a missing split or column fails in a second, not after the analyses); read later
    corpus = read_corpus(model, opts.corpus, split=opts.corpus_split, field=opts.corpus_field)
    ids = tokens[0].tolist()
    strs = str_tokens(model, tokens)
    tok_table = tokenization_table(model, prompt, tokens)
    n_layers, last = int(model.cfg.n_layers), len(ids) - 1

    step("logit lens")
    k = min(opts.k_next, int(model.cfg.d_vocab))
    lens = logit_lens.logit_lens(model, tokens, k=k, target="final")
    grid = logit_lens.summarize_lens(lens)
    next_tokens = lens[(lens.layer == n_layers) & (lens.position == last)][
        ["rank", "token_id", "token", "prob", "logprob"]].reset_index(drop=True)
    final_by_layer = grid[grid.position == last][
        ["layer", "layer_name", "target_token", "target_prob", "target_rank", "top_token", "top_prob"]
    ].reset_index(drop=True)

    step("attention")
    scores = attention.head_scores(model, tokens, seed=opts.seed)
    notable = notable_heads(scores, opts.n_pattern_heads)
    heads = view_heads(model, notable, len(ids), opts.view_bytes)
    # the patterns of the view's heads and of every notable head (the figures draw those, in or out of the view)
    wanted = list(dict.fromkeys([*heads, *((int(r.layer), int(r.head)) for r in notable.itertuples())]))
    if len(wanted) == int(model.cfg.n_layers) * int(model.cfg.n_heads):
        patterns = attention.attention_patterns(model, tokens)  # one forward pass for every head
    else:
        patterns = pd.concat([attention.attention_patterns(model, tokens, layers=h[0], heads=h[1]) for h in wanted],
                             ignore_index=True)

    # a universal-path model (interp.loading.universal) has no MLP neuron hooks or readable weight matrices: the
    # sections built on them are left empty, and the report says why (model.capabilities)
    universal = getattr(model.cfg, "path", "native") == "universal"
    step("neurons")
    top = _EMPTY["neurons"] if universal else neurons.top_neurons(model, tokens, position=-1, k=opts.k_neurons)
    paged = page_neurons(top)
    answers, on_prompt = [], []
    for layer, neuron in paged:
        for frame, df in ((answers, neurons.neuron_answers(model, layer, neuron, k=opts.k_answers, center=True)),
                          (on_prompt, neurons.neuron_activations(model, tokens, layer, neuron))):
            df.insert(0, "neuron", neuron)
            df.insert(0, "layer", layer)
            frame.append(df)
    answers_df = pd.concat(answers, ignore_index=True) if answers else pd.DataFrame()
    prompt_df = pd.concat(on_prompt, ignore_index=True) if on_prompt else pd.DataFrame()

    step("neuron pages")
    profiles = None
    if corpus is not None and paged:
        profiles = neurons.neuron_profiles(model, corpus[1], paged, k=opts.k_examples,
                                           max_tokens=opts.max_corpus_tokens)

    step("superposition")
    sets = opts.superposition_sets
    if universal:
        stats, samples = _EMPTY["superposition"], _EMPTY["angle_samples"]
    else:
        stats = superposition.direction_set_stats(model, sets=sets, max_pairs=opts.max_pairs, seed=opts.seed)
        samples = superposition.direction_angle_samples(model, sets=sets, max_pairs=opts.hist_pairs, seed=opts.seed)
    pdf = superposition.random_angle_pdf(int(model.cfg.d_model), n_points=361)

    step("patching")
    patching = _patching_section(model, tokens, k=opts.k_neurons) if opts.patching and not universal else {}

    step("sae features")
    sae_section = {}
    if sae is not None:
        from interp.report.sae_section import collect_sae_section

        sae_section = collect_sae_section(model, tokens, *sae, corpus, k_features=opts.k_sae_features,
                                          n_cards=opts.n_sae_cards, k_answers=opts.k_answers,
                                          k_examples=opts.k_examples, max_tokens=opts.max_corpus_tokens)

    step("attribution graph")
    circuit = {}
    if transcoders is not None:
        from interp.report.circuit_section import collect_circuit_section

        circuit = collect_circuit_section(model, tokens, transcoders, str(opts.transcoders),
                                          max_tokens=opts.max_graph_tokens, node_threshold=0.8, edge_threshold=0.98,
                                          corpus=corpus)

    opts_dict = asdict(replace(opts, corpus=None))  # a datasets object is shown by name, not deep-copied
    opts_dict["corpus"] = corpus[0] if corpus else None
    opts_dict["superposition_sets"] = list(sets)
    if opts.sae is None:  # a report without an SAE lists the options it always had
        for key in ("sae", "k_sae_features", "n_sae_cards"):
            opts_dict.pop(key)
    else:
        opts_dict["sae"] = str(opts.sae)
    if opts.transcoders is None:
        for key in ("transcoders", "max_graph_tokens"):
            opts_dict.pop(key)
    return ReportData(
        prompt=prompt, options=opts_dict, model=model_summary(model), token_ids=[int(i) for i in ids],
        str_tokens=strs, tokens=tok_table, lens=lens, lens_grid=grid, next_tokens=next_tokens,
        final_by_layer=final_by_layer, head_scores=scores, notable_heads=notable, patterns=patterns,
        view_heads=heads, neurons=top, neuron_answers=answers_df, neuron_profiles=profiles, neuron_prompt=prompt_df,
        corpus_name=corpus[0] if corpus else None, superposition=stats, angle_samples=samples, random_pdf=pdf,
        patching=patching, sae=sae_section, circuit=circuit,
    )


# A longer clean prompt patches resid_pre at the positions that matter, not all: the last (where the metric is
# read), the corrupted token's, and the PATCH_POSITIONS others with the largest attribution-patching estimate.
PATCH_ALL_UP_TO = 64
PATCH_POSITIONS = 16


def induction_pair(model, tokens: torch.Tensor):
    """``(pair, notes)``: the prompt followed by its own beginning (``causal.repeated_text_pair``), fitted to n_ctx.

    The repeat is the prompt's first half when that fits, else as many tokens as n_ctx leaves; a prompt that
    leaves no room keeps only its last two thirds. ``notes`` says what was shortened and why."""
    from interp.analysis import causal

    n, n_ctx, notes = int(tokens.shape[1]), int(model.cfg.n_ctx), []
    if n >= 2 and n_ctx - n < 1:
        keep = max(2, 2 * n_ctx // 3)
        notes.append(f"the prompt's first {n - keep} tokens are left out: the prompt and a repeat of its beginning "
                     f"must fit the model's n_ctx={n_ctx}")
        tokens, n = tokens[:, -keep:], keep
    j = min(n // 2, n_ctx - n)
    if 0 < j < n // 2:
        notes.append(f"the repeat is the first {j} tokens (not half the prompt): that is what fits n_ctx={n_ctx}")
    return causal.repeated_text_pair(model, tokens, position=max(j, 1) if n >= 2 else None), notes


def pair_excerpt(clean: str, corrupted: str, limit: int = 1200) -> tuple[str, str, str | None]:
    """``(clean, corrupted, note)`` to show a clean/corrupted pair: whole when both fit ``limit`` characters, else
    each cut to its start, the span around where the two differ, and its end, with the cuts marked in the text and
    ``note`` saying what was left out (None when nothing was)."""
    if max(len(clean), len(corrupted)) <= limit:
        return clean, corrupted, None
    d = next((i for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b), min(len(clean), len(corrupted)))
    edge, side = limit // 6, limit // 4  # the start and end; either side of the difference

    def cut(text: str) -> str:
        keep = sorted({*range(min(edge, len(text))), *range(max(0, d - side), min(len(text), d + side)),
                       *range(max(0, len(text) - edge), len(text))})
        out, last = [], -1
        for i in keep:
            if i != last + 1:
                out.append(f" [… {i - last - 1:,} characters …] ")
            out.append(text[i])
            last = i
        return "".join(out)

    note = (f"the texts are {len(clean):,} and {len(corrupted):,} characters: shown are their start, the "
            f"{2 * side} characters around where they differ and their end")
    return cut(clean), cut(corrupted), note


def positions_that_matter(model, clean, corrupted, where: str = "resid_pre", **metric) -> tuple[list | None, str]:
    """``(positions, note)``: where a layer × position sweep of ``where`` patches a clean prompt longer than
    PATCH_ALL_UP_TO tokens: the last position (where the metric is read), every position at which the two prompts
    differ, and the PATCH_POSITIONS others with the largest attribution-patching estimate (one forward and backward
    pass covers every position). ``(None, "")`` for a shorter prompt: every position is patched."""
    from interp.analysis import causal

    n = int(clean.shape[1])
    if n <= PATCH_ALL_UP_TO or clean.shape != corrupted.shape:  # (mismatched prompts: the sweep says what is wrong)
        return None, ""
    differ = [int(p) for p in (clean[0] != corrupted[0]).nonzero().flatten()]
    est = causal.attribution_patching(model, clean, corrupted, where=where, **metric)
    strength = est.assign(size=est.attribution.abs()).groupby("position")["size"].max()
    top = strength.drop(index=[n - 1, *differ], errors="ignore").nlargest(PATCH_POSITIONS).index
    positions = sorted({n - 1, *differ, *(int(p) for p in top)})
    return positions, (f"{where} is patched at {len(positions)} of {n} positions: the last (where the metric is "
                       f"read), where the prompts differ ({', '.join(map(str, differ)) or 'nowhere'}) and the "
                       f"{len(top)} with the largest attribution-patching estimate")


def _patching_section(model, tokens: torch.Tensor, k: int) -> dict:
    """Patching, attribution and DLA on the prompt followed by its own first half (an induction task)."""
    from interp.analysis import causal

    try:
        pair, notes = induction_pair(model, tokens)
    except InterpError:  # a one-token prompt: nothing to repeat
        return {}
    kw = {"answer": pair.answer, "wrong": pair.wrong}
    heads = causal.activation_patching(model, pair.clean, pair.corrupted, where="z", by_position=False, **kw)
    positions, note = positions_that_matter(model, pair.clean, pair.corrupted, "resid_pre", **kw)
    notes += [note] if note else []
    grid = causal.activation_patching(model, pair.clean, pair.corrupted, where="resid_pre", positions=positions,
                                      **kw)
    attr = causal.attribution_patching(model, pair.clean, pair.corrupted, where="z", by_position=False, **kw)
    heads["attribution"] = attr.attribution.to_numpy()
    dla = causal.direct_logit_attribution(model, pair.clean, pair.answer, pair.wrong, k_neurons=k)
    strs = str_tokens(model, pair.clean)

    def text(t):
        if getattr(model, "tokenizer", None) is None:
            return " ".join(str_tokens(model, t))
        decoded = model.to_string(t[0])
        # a corrupted token may cut a multi-byte character: then show the shared token labels ("今₀今₁"), never "�"
        return "".join(str_tokens(model, t)) if "\ufffd" in decoded else decoded

    info = {"clean": text(pair.clean), "corrupted": text(pair.corrupted),
            "answer": str_tokens(model, torch.tensor([[pair.answer]]))[0],
            "wrong": str_tokens(model, torch.tensor([[pair.wrong]]))[0], "position": pair.position,
            "clean_logit_diff": heads.attrs["clean"], "corrupted_logit_diff": heads.attrs["corrupted"]}
    r = float(heads.attribution.corr(heads.effect - heads.attrs["corrupted"]))
    out = {"pair": info, "tokens": strs, "heads": heads, "grid": grid, "dla": dla, "attribution_r": r,
           "notes": notes}
    from interp.analysis.circuits.edges import edge_attribution, faithfulness_curve

    try:  # EAP over every edge (two forwards, one backward) and how much its top-n circuits keep
        edges = edge_attribution(model, pair.clean, pair.corrupted, **kw)
        out.update(edges=edges, faithfulness=faithfulness_curve(model, edges, pair.clean, pair.corrupted, **kw))
    except InterpError as e:  # a model whose residual stream is not a sum of components (post-norm)
        notes.append(f"no edge attribution: {str(e).split(': ', 1)[-1]}")
    return out


def pattern_matrix(patterns: pd.DataFrame, layer: int, head: int, n: int) -> np.ndarray:
    """A ``[query, key]`` matrix from an ``attention_patterns`` frame (NaN above the diagonal)."""
    sel = patterns[(patterns.layer == layer) & (patterns["head"] == head)]
    m = np.full((n, n), np.nan)
    m[sel.query_pos.to_numpy(), sel.key_pos.to_numpy()] = sel.weight.to_numpy()
    return m
