"""Measurements of models and artifacts against the baselines a user would otherwise pick, and their report."""
