"""Benchmark evaluation: data loading, prompts, scoring, a code sandbox, metrics and the run loop.

The runner talks to a model only through the `Generator` protocol (generator.py), so everything
here can be tested with a fake generator that returns known outputs.
"""
