"""Benchmark suite of gae_sandbox: ``python -m benchmarks`` (see benchmarks/README.md).

Nothing here imports gae_sandbox at module level: some figures run children that must never
have imported it.
"""
