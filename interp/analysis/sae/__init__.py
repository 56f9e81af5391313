"""Sparse autoencoders: from superposition statistics to features.

``interp.analysis.superposition`` measures how many almost-perpendicular directions a layer could hold; an
SAE takes a layer's activations apart into such directions. The modules:

* ``model``: the :class:`SAE` (SAELens' parameter and hook names; ReLU, TopK and JumpReLU) and SAELens'
  on-disk format (``save_sae`` / ``load_sae``);
* ``source``: activations from a tensor, shards on disk, ``(model, hook_name, corpus)`` or an activation
  dataset object;
* ``train``: ``train_sae`` with checkpoints that resume and a time budget;
* ``evaluate``: splicing SAEs into a model (``splice_sae``; SAELens SAE objects too; ``run_with_saes`` /
  ``run_with_cache_with_saes`` as SAELens' HookedSAETransformer), L0, variance explained, CE loss recovered,
  dead and dense latents, over a corpus or token by token on a prompt (``token_reconstruction``);
* ``transcoder``: transcoders (an MLP's input in, its output predicted; skip and TopK/ReLU/JumpReLU),
  ``train_transcoder``, splicing every MLP out (``splice_transcoders``) and ``evaluate_transcoders``;
* ``cross_layer``: the cross-layer transcoder (each layer's features write to every later MLP output),
  ``train_cross_layer_transcoder``; it splices, evaluates and builds attribution graphs like a per-layer set;
* ``features``: a feature's top-activating contexts (``feature_top_contexts``; with the activation at every
  nearby token, ``feature_profiles``), its logit effects and the near-orthogonality of the decoder directions;
* ``cards``: what SAE dashboards add — quantile samples and correlated features over a corpus
  (``feature_dashboard``) and the per-token effect of ablating a feature (``feature_ablation_effects``).

>>> import torch
>>> from interp.analysis.sae import SAE, SAEConfig
>>> SAE(SAEConfig(d_in=16, d_sae=64, architecture="relu")).W_enc.shape
torch.Size([16, 64])
"""

from interp.analysis.sae.cards import (
    FeatureDashboard,
    feature_ablation_effects,
    feature_correlations,
    feature_dashboard,
    feature_quantile_samples,
)
from interp.analysis.sae.cross_layer import (
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
    train_cross_layer_transcoder,
)
from interp.analysis.sae.evaluate import (
    SAEEval,
    ce_loss_recovered,
    evaluate_sae,
    run_with_cache_with_saes,
    run_with_saes,
    sae_hook,
    sae_metrics,
    splice_sae,
    splice_saes,
    token_reconstruction,
)
from interp.analysis.sae.features import (
    decoder_angle_samples,
    decoder_orthogonality,
    feature_activations,
    feature_logit_effects,
    feature_profiles,
    feature_top_contexts,
    similar_features,
    transcoder_feature_profiles,
)
from interp.analysis.sae.model import ARCHITECTURES, SAE, SAEConfig, load_sae, save_sae
from interp.analysis.sae.source import ActivationSource, as_source, model_activations
from interp.analysis.sae.train import geometric_median, train_sae
from interp.analysis.sae.transcoder import (
    Transcoder,
    TranscoderConfig,
    TranscoderEval,
    TranscoderSet,
    evaluate_transcoders,
    load_transcoder,
    load_transcoders,
    splice_transcoders,
    train_transcoder,
    transcoder_set,
)

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "ActivationSource",
    "CrossLayerTranscoder",
    "CrossLayerTranscoderConfig",
    "FeatureDashboard",
    "SAEConfig",
    "SAEEval",
    "Transcoder",
    "TranscoderConfig",
    "TranscoderEval",
    "TranscoderSet",
    "as_source",
    "ce_loss_recovered",
    "decoder_angle_samples",
    "decoder_orthogonality",
    "evaluate_sae",
    "evaluate_transcoders",
    "feature_ablation_effects",
    "feature_activations",
    "feature_correlations",
    "feature_dashboard",
    "feature_logit_effects",
    "feature_profiles",
    "feature_quantile_samples",
    "feature_top_contexts",
    "geometric_median",
    "load_sae",
    "load_transcoder",
    "load_transcoders",
    "model_activations",
    "run_with_cache_with_saes",
    "run_with_saes",
    "sae_hook",
    "sae_metrics",
    "save_sae",
    "similar_features",
    "splice_sae",
    "splice_saes",
    "splice_transcoders",
    "token_reconstruction",
    "train_cross_layer_transcoder",
    "train_sae",
    "train_transcoder",
    "transcoder_feature_profiles",
    "transcoder_set",
]
