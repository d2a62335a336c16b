"""Benchmarks (``python -m bench.run``): processor throughput against its ceiling and a
Faust peer, API latency against raw-table queries, collector acknowledgements.

Not part of ``make test``; results land in ``bench/results/<date>.json``.
"""
