"""Significance analysis: how much each component of a fine-tuned model matters for its task."""
