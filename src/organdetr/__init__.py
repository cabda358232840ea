"""organdetr: organ detection in 3D CT scans with detection transformers (Organ-DETR)."""

__version__ = "0.1.0"
