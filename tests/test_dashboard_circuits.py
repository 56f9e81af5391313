"""The dashboard's Edges and Steering pages (AppTest): the numbers shown equal fresh analyzer calls."""

from __future__ import annotations

import numpy as np
import pytest
from test_dashboard import PROMPT, _charts, _frame, _goto, _ok, app, data_dir, tiny, tiny_dir  # noqa: F401  (fixtures)

from interp.report.inputs import encode_prompt

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: two threads only oversubscribe

pytest.importorskip("streamlit.testing.v1")


def test_edges_page(app, tiny):  # noqa: F811
    from interp.analysis.causal import repeated_text_pair
    from interp.analysis.circuits.edges import edge_attribution

    _goto(app, "Edges")
    app.radio(key="edges_method").set_value("eap").run()
    _ok(app)
    assert "edges_circuit" in _charts(app)
    pair = repeated_text_pair(tiny, encode_prompt(tiny, PROMPT))
    ref = edge_attribution(tiny, pair.clean, pair.corrupted, answer=pair.answer, wrong=pair.wrong).head(25)
    shown = _frame(app, "sender", "receiver", "score")
    assert shown.sender.tolist() == ref.sender.tolist() and shown.receiver.tolist() == ref.receiver.tolist()
    np.testing.assert_allclose(shown.score.to_numpy(), ref.score.to_numpy(), rtol=1e-6)
    curve = _frame(app, "n_edges", "faithfulness")
    np.testing.assert_allclose(curve.faithfulness.iloc[[0, -1]].to_numpy(), [0.0, 1.0], atol=1e-4)


def test_steering_page(app, tiny):  # noqa: F811
    from interp.analysis.steering import steering_effect, steering_vector

    _goto(app, "Steering")
    app.selectbox(key="steer_hook").set_value("blocks.1.hook_resid_pre").run()
    app.number_input(key="steer_scale").set_value(6.0).run()
    app.slider(key="steer_new").set_value(4).run()
    _ok(app)
    vec = steering_vector(tiny, ["love and joy"], ["war and death"], "blocks.1.hook_resid_pre", position="mean")
    ref = steering_effect(tiny, encode_prompt(tiny, PROMPT), vec, "blocks.1.hook_resid_pre", [0.0, 3.0, 6.0],
                          max_new_tokens=4)
    shown = _frame(app, "scale", "kl", "generation")
    np.testing.assert_allclose(shown.kl.to_numpy(), ref.kl.to_numpy(), rtol=1e-6, atol=1e-9)
    assert shown.generation.tolist() == ref.generation.tolist()
    app.text_area(key="steer_neg").set_value("").run()
    _ok(app)
    assert app.info
