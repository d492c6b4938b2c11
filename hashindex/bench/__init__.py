"""Latency benchmark: every index kind side by side with raw Faiss, numpy and usearch.

:func:`run_latency_benchmark` measures, for each database size and kind of synthetic
codes (:func:`hashindex.datasets.synthetic_codes`, uniform and clustered):

- each index kind (flat, IVF over an ``nprobe`` sweep, HNSW over ``efSearch``, MultiHash
  over ``nflip``, and ``auto``): build time, memory, queries per second with batches of
  ``batch`` queries, single-query latency (median and p99), for k = 8 and k = 1000, and
  distance recall@k against exact flat search;
- the same Faiss index searched directly (hashindex's own overhead), numpy brute force
  (XOR + ``np.bitwise_count``) and usearch's binary Hamming index (exact and HNSW);
- padding of code widths without a fast Faiss kernel, ``search_rerank`` over stored
  float16 features, and loading HDF5 shards into an index;
- GpuIndexBinaryFlat when ``faiss.get_num_gpus() > 0``.

Each measurement is time-bounded (``budget_s``): single queries repeat until the budget is
spent (at least ``MIN_SAMPLES``), batches are cut to what fits it, and the JSON records
how many queries each figure rests on. Systems compared head to head are timed in
alternation, so background load hits them alike. The issue's targets are evaluated as
ratios measured within the run (:func:`compute_targets`).

Distance recall@k: a returned neighbour counts when its Hamming distance (recomputed here
from the returned id) is at most the exact k-th distance; Hamming distances tie
massively, so id overlap with the exact result would understate correct answers.

Modules: :mod:`.harness` (configuration, batch timing, recall, baselines), :mod:`.sections`
(what is measured), :mod:`.targets`, :mod:`.report` (JSON, markdown), :mod:`.plots`,
:mod:`.run` (one run); single-query timing and the environment record come from
:mod:`hashindex.timing`. The ``hashindex bench`` command is :mod:`hashapp.bench`.
"""

from .harness import BenchConfig, NumpyHamming, distance_recall
from .report import markdown_report, render_results, write_outputs
from .run import run_latency_benchmark
from .targets import compute_targets

__all__ = ["BenchConfig", "NumpyHamming", "compute_targets", "distance_recall", "markdown_report",
           "render_results", "run_latency_benchmark", "write_outputs"]
