"""Evaluation tasks (prompt format, item generation, answer checker)."""
