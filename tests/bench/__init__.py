"""Benchmarks (`make bench`): the gateway against bare baselines run side by side on the same
machine, reported as ratios. Not tests: pytest does not collect this folder; the smoke tests in
tests/unit/test_bench_smoke.py run each benchmark at a tiny size."""
