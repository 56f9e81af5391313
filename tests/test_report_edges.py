"""The report's edge-attribution part (inside the patching section): tables equal the analyzers, HTML and Markdown."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import PROMPT, _floats, data, model, page, tables  # noqa: F401  (fixtures)

from interp.report import render_markdown
from interp.report.inputs import encode_prompt

pytestmark = pytest.mark.usefixtures("one_thread")  # a small model: two threads only oversubscribe


def test_edges_equal_the_analyzers(model, tables, page, data):  # noqa: F811
    from interp.analysis.causal import repeated_text_pair
    from interp.analysis.circuits.edges import edge_attribution

    pair = repeated_text_pair(model, encode_prompt(model, PROMPT))
    ref = edge_attribution(model, pair.clean, pair.corrupted, answer=pair.answer, wrong=pair.wrong).head(20)
    shown = tables["patching_edges"]
    assert list(shown.sender) == list(ref.sender) and list(shown.receiver) == list(ref.receiver)
    np.testing.assert_allclose(_floats(shown.score), ref.score.to_numpy(), rtol=1e-6)
    curve = _floats(tables["patching_faithfulness"].faithfulness)
    np.testing.assert_allclose(curve[[0, -1]], [0.0, 1.0], atol=1e-4)
    assert 'id="fig-edges"' in page
    md = render_markdown(data)
    assert "Edge attribution (EAP) over all" in md and "| " + ref.sender.iloc[0] in md
