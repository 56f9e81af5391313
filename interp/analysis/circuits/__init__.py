"""Circuits: transcoder attribution graphs, edge attribution (EAP / EAP-IG) and their faithfulness.

Each submodule does one job: `graph` builds attribution graphs under frozen attention and norms,
`edges` scores the TransformerLens component graph. Steering lives in `interp.analysis.steering`.
"""
