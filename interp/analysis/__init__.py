"""Analyzers: pure functions from (model, tokens or cache, options) to pandas DataFrames or small dataclasses."""
