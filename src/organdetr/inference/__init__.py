"""A trained run + scans -> predictions (the ``predict`` and ``export`` verbs).

``predictor`` (one scan: read, preprocess exactly as the run's cache was, detect, map boxes back to the scan
in voxels and LPS mm), ``predict`` (a batch of scans -> prediction JSON, pictures and the formats asked for;
one bad scan does not stop the others), ``dicomweb`` (a study fetched from a PACS, the results stored back),
``export`` (ONNX, checked against PyTorch), ``overlay`` (the per-scan three-view picture).
"""
