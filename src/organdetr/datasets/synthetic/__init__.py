"""Synthetic datasets to train and test from scratch (``organdetr synth``), written as nnU-Net v2 raw.

:mod:`.phantom`: abdominal CT with ten labelled organs (its anatomy: :mod:`.anatomy` paints the body and
skeleton, :mod:`.organs` the organs and vessels, :mod:`.tissues` gives CT numbers, :mod:`.canvas` the maps
painted, :mod:`.shapes` the smooth deformed shapes); :mod:`.brain`: four-channel brain MRI with a graded
glioma; :mod:`.writing`: per-case seeds and the (parallel) loop that writes the cases.
"""
