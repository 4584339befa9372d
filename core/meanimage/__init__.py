"""Job 1, meanimage: one slide's masked mean image (AstroPath §2).

Background thresholds from the slide's edge fields, then every field masked (tissue, blur,
saturation) and its kept pixels, exposure-normalised to counts/ms, summed into a mergeable stack;
the mean image, its uncertainty and the statistics that document it.

- :mod:`.pipeline`: the per-slide steps as plain functions (``plan_slide``, ``field_thresholds``,
  ``mask_and_stack``, ``finish_mean_image``, or all at once ``compute_mean_image``).
- :mod:`.thresholds`: iterated Otsu with AstroPath's skew criterion (``slide_thresholds``).
- :mod:`.exposure`: exposure-time normalisation (``correct_exposure``); :mod:`.geometry`: edge and
  bulk fields (``classify_fields``).
- :mod:`.masks`: the masks of one field.
- :mod:`.outputs`: the output folder (``write_meanimage_outputs``, ``read_mean_image_stack``);
  :mod:`.report`: its three PDF summaries (``write_reports``).
"""
