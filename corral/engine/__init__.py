"""Inference engines behind a narrow interface (`corral.engine.base`)."""
