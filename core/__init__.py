"""Pure computation and storage adapters, grouped by job. Imports neither Prefect nor a Dask cluster.

One subpackage per job — :mod:`.meanimage`, :mod:`.model`, :mod:`.applied`, :mod:`.correct`,
:mod:`.estimate` — plus :mod:`.io` (storage, the slide contract, file formats, output folders) and
:mod:`.synth` (synthetic data with a known truth). The building blocks several jobs share stay here:
:mod:`.stack` (the mergeable mean-image stack) and :mod:`.stack_store` (its Zarr copy),
:mod:`.smoothing`, :mod:`.morphology`, :mod:`.illumination`, :mod:`.buffers`, :mod:`.report_pages`
(the PDF reports' pieces), :mod:`.errors` (what is a person's mistake, what is a hiccup) and
:mod:`.failpoints`.
"""
