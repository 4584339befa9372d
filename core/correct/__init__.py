"""Job 4, correct: per-tile flatfield correction of OME-Zarr images, with a multiscale output.

- :mod:`.tile`: one tile from start to finish: ``plan_tile`` validates everything and writes
  nothing, ``run_tile`` corrects and publishes.
- :mod:`.flatfield_sources`: where the flatfield comes from: a model version, a file, or the tile
  itself (``model_flatfield``, ``file_flatfield``, ``estimate_flatfield``).
- :mod:`.background`: the background subtracted before dividing (``estimate_background``).
- :mod:`.graph`: the correction chunk by chunk and its pyramid, as one Dask graph
  (``stored_correction`` writes it into zarr arrays; ``correction_pyramid`` returns its levels).
- :mod:`.tiff_output`: a TIFF tile's output, one OME-TIFF file with its pyramid in SubIFDs, renamed
  into place when whole (``write_corrected_tiff``, ``tiff_output_state``).
"""
