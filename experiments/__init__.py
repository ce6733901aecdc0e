"""The experiments: grids of training runs, benchmarks and figures, each a module run from the
repository root as ``python -m experiments.NAME ...`` (``--help`` lists its options).

* grids of training runs, their report in ``WORKDIR/<grid>.md|json|png``: ``ablation`` (network x
  loss), ``asm_accuracy`` (the shape model's PCA accuracy), ``study`` (the recipe study), on the
  machinery of :mod:`experiments.grid`;
* benchmarks, their last output line JSON: ``bench_train`` (JAX against the authors' Keras on the
  CPU), ``bench_gpu`` (JAX against PyTorch on a GPU), ``bench_loop`` (the whole training loop
  against its step; ``experiments/gpu_loop.sh`` runs it on a GPU machine), ``bench_depthwise``,
  ``bench_ops``, ``bench_input``; ``xplane_ops`` sums the op times of a profiler trace;
* figures and packaging: ``make_figures``, ``make_photo_figure``, ``make_predict_figure``,
  ``package_model``, ``calibrate_detectors``.

What several of them share is in :mod:`experiments.common` (paths, config files with ``--set``
overrides, child processes and their ``RESULT`` lines, stand-in batches). Results and their
record: ``experiments/RESULTS.md`` and ``experiments/results/``.
"""
