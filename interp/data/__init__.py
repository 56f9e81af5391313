"""Corpus-scale data: streaming corpora, sharded scans on ``torch.distributed``, activation datasets on disk.

* :mod:`interp.data.corpus` — :class:`Corpus` / :func:`as_corpus` (files, folders, JSONL/Parquet,
  `datasets`, memory), background tokenization, document-respecting windows.
* :mod:`interp.data.distributed` — rank/world, the collectives scans use (identity in one process).
* :mod:`interp.data.scan` — :func:`run_scan`, the engine every corpus scan shares (sharding, checkpoints,
  resume, merge), the running top-k and running statistics, :func:`activation_stats`.
* :mod:`interp.data.activations` — :func:`write_activation_dataset` and :class:`ActivationDataset`.
"""

from interp.data.activations import ActivationDataset, write_activation_dataset
from interp.data.corpus import Corpus, Window, as_corpus, document_windows, tokenized
from interp.data.distributed import init_from_env, rank_world
from interp.data.scan import activation_stats, run_scan

__all__ = [
    "ActivationDataset",
    "Corpus",
    "Window",
    "activation_stats",
    "as_corpus",
    "document_windows",
    "init_from_env",
    "rank_world",
    "run_scan",
    "tokenized",
    "write_activation_dataset",
]
