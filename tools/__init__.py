"""Helper scripts for developers (measurements behind the docs), not entry points a user runs.

    python -m tools.d2cache_speed          d2Cache vs no cache per step under equal load (docs/performance.md)
    python -m tools.memory_estimate        per-device memory of a run on given meshes (docs/scale_out.md)
    python -m tools.convert_memory_check   peak memory of the converter (docs/checkpoints.md)

Run them from a checkout; they are not installed with the package.
"""
