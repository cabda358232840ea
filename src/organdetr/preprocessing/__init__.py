"""Preprocessing: an nnU-Net v2 raw dataset -> the model-grid cache that training reads.

In order, per dataset (:mod:`.run`, ``organdetr preprocess``): the plans (:mod:`.plans`: the grid, the fit,
the HU window or per-channel normalisation, the classes, channels, regions and case classes, written as
``plans.json``); per case, canonical LPS orientation and ONE resampling onto the model grid
(:mod:`.resampling`), intensities clipped and scaled or z-scored (:mod:`.intensity`), labels resampled
nearest-neighbour and organ boxes recomputed on the grid; then the case written to the cache, arrays first
and its checksummed record last (:mod:`.cache`: the cache as a contract, verified before it is trusted).
"""
