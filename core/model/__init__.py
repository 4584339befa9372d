"""Job 2, model: flatfield model versions from slides' mean images, and comparing mean images.

- :mod:`.models_csv`: the models CSV, which slides make which version (``read_models_csv``,
  ``select_version``).
- :mod:`.flatfield`: a flatfield from a merged mean-image stack (``build_flatfield``);
  :mod:`.build`: a version from slides' stacks (``merge_stacks``, ``write_model_version``);
  :mod:`.flatfield_statistics`: its per-layer statistics (``layer_statistics``).
- :mod:`.store`: the immutable, versioned model store (``publish_version``, ``read_model``);
  :mod:`.report`: the version's PDF summary (``write_model_summary``).
- :mod:`.compare`: slide-pair δ/σ comparison of mean images (``compare_pair``), planned by
  :mod:`.compare_plan` (``make_plan``), written by :mod:`.compare_outputs` (``write_outputs``) and
  drawn by :mod:`.compare_plots` (``write_grids``).
"""
