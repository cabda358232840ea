"""Results in the formats of the tools people look at them with: 3D Slicer, MONAI, nnDetection, a browser.

One module per format; each is imported on demand by the verbs that use it (``predict --format``,
``predict --html``, ``convert``).
"""
