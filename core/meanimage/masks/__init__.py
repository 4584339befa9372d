"""The masks of one field (AstroPath §2.2–2.6): what is tissue, in focus and not saturated.

- :mod:`.parameters`: the masking parameters per microscope and the working grid (``MaskParameters``).
- :mod:`.tissue`: ``tissue_mask``; :mod:`.blur`: ``blur_mask`` (normalised Laplacian sharpness);
  :mod:`.saturation`: ``saturation_masks`` per layer group.
- :mod:`.combined`: all of them for one field and their file forms (``compute_field_masks``,
  ``stacking_masks``).
"""
