"""Synthetic data with a known truth, for the demo, the tests and the benchmarks.

- :mod:`.slides`: AstroPath-like cohorts with a planted flatfield (``write_cohort``); :mod:`.oracle`:
  how close the mean-image chain gets against an informed oracle (``run_arm``).
- :mod:`.stacks`: image stacks with a known flatfield and darkfield (``write_stack``);
  :mod:`.sweep`: the seeded randomised stacks of the estimator's sweep (``draw_case``, ``generate``).
- :mod:`.starfield`: star fields (sparse point sources on a varying sky) through a planted flatfield
  (``star_field_stack``), for ``estimate --background mesh``.
- :mod:`.tiles`: OME-Zarr tiles with a planted flatfield and background (``write_synthetic_tile``).
"""
