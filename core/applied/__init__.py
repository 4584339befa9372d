"""Job 3, applied test: does a flatfield model really flatten held-out images? (AstroPath §5)

A slide's fields split in two halves; one half's mean image is corrected with the model built from
the other, and the illumination variation before and after is measured.

- :mod:`.evaluation`: ``split_fields``, ``restack``, ``correct_mean_image``, ``evaluate``
  (``AppliedTestResult``).
- :mod:`.outputs`: the outputs under AstroPath's names (``write_applied_test_outputs``);
  :mod:`.report`: plots and the PDF summary (``write_applied_test_summary``).
"""
