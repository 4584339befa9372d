"""Job 5, estimate: flatfield (and darkfield) estimated from the images themselves.

The model is I = S·B + D per frame (S the flatfield, D the darkfield, B the scene), fitted robustly
on block means of the frames.

- :mod:`.estimator`: the entry points (``estimate_shading``, ``run_estimate``) and the checks that
  refuse implausible answers (``check_plausible``, ``check_darkfield_below_data``).
- :mod:`.grid`: the working grid (block means, the smooth basis); :mod:`.floor_fit`: the "floor"
  regression on it (``fit_grid``); :mod:`.surfaces` and :mod:`.surface_fit`: the penalised-surface
  method (``--method surface``).
- :mod:`.mesh_background`: ``--background mesh`` for star fields — sources found above each frame's
  photutils mesh background (``mesh_background``, ``source_mask``) get no weight in the fit.
- :mod:`.chunked`: the same estimator on a Dask array larger than memory (``estimate_shading_dask``).
- :mod:`.inputs`: what it reads, as lazy stacks (``open_images``); :mod:`.outputs`: its output folder
  (``write_estimate``, ``read_estimate``).
"""
