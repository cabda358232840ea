"""Predictions in the formats other tools read: DICOM SEG / SR for PACS (and DICOMweb), viewers, toolkits.

One module per format (``dicom_seg``, ``dicom_sr``, ``dicomweb``, ...), each a thin layer over the field's
library for that format (highdicom, dicomweb-client, ...). Code tables the formats need live as data in
``formats/codes/``. Nothing here is imported by ``organdetr.predict`` unless a format is asked for.
"""
