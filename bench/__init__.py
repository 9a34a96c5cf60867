"""On-demand benchmark: a deterministic model corpus (:mod:`bench.corpus`) and the tool comparison (:mod:`bench.run`)."""
