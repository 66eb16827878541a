"""The |γ| under which a channel counts as switched off (the reasoning is in `bnrank.engine.gamma`)."""

DEFAULT_THRESHOLD = 0.05
