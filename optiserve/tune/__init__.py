"""``optiserve tune``: search the serving configuration (batching and layout) of one model
version against a p99 latency SLO, measuring a live server.

One concern per module: :mod:`.space` (what varies, the space file), :mod:`.strategies` (grid,
random, bayes), :mod:`.scoring` (sustained throughput under the SLO), :mod:`.study` (the
resumable study file), :mod:`.runner` (apply a configuration, measure it, the tune loop),
:mod:`.apply` (the best configuration as a new version or a serve config), :mod:`.report`.
"""
