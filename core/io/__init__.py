"""Where data comes from and goes to, shared by every job.

- :mod:`.storage`: one vocabulary for local paths and ``s3://`` URLs (fsspec), credentials kept out of
  URLs and messages (``join``, ``exists``, ``read_bytes``, ``write_bytes``, ``check_output_folder``).
- :mod:`.slide`: the slide contract (``slide.json``, ``fields.csv``, the field images):
  ``load_slide``, ``read_field``, ``check_field_files``.
- :mod:`.astropath_tree`: AstroPath sample trees read where they are (``sampledef.csv``, the XML
  metadata, the ``.Data.dat`` fields) as slides of the slide contract (``load_sample``,
  ``select_samples``, ``open_slide``).
- :mod:`.astropath`: AstroPath's file formats, interleaved ``.bin`` images and CSV tables
  (``read_bin``, ``write_bin``, ``read_csv``, ``write_csv``).
- :mod:`.omezarr`: OME-Zarr images, NGFF 0.4 on zarr v2 and 0.5 on zarr v3 (``open_image``,
  ``create_image_group``, ``write_multiscales``).
- :mod:`.tiffstack`: TIFF / OME-TIFF stacks as tiles of the correct job, read lazily page by page
  (``open_tiff_image``).
- :mod:`.output_folders`: output folders that look complete only when they are (``StagedOutput``,
  ``is_complete``, ``read_manifest``, ``refuse_foreign``); :mod:`.staging_lease`: which run owns a
  staging folder and when a leftover one may go.
- :mod:`.cohort`: slides across roots and their mean-image outputs, as models, comparisons and
  applied tests read them (``find_slides``, ``load_mean_image``, ``load_stack``).
"""
