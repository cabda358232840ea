"""Predictions in the formats of the tools people look at them with: DICOM SEG / SR for a PACS (and DICOMweb),
3D Slicer, MONAI, nnDetection, a browser.

One module per format (``dicom_seg``, ``dicom_sr``, ``dicomweb``, ``slicer``, ``monai_datalist``,
``nndetection``, ``html_viewer``), each a thin layer over the field's library for that format (highdicom,
dicomweb-client, slicerio, MONAI). Code tables the formats need live as data in ``formats/codes/``.
Nothing here is imported by ``organdetr.inference.predict`` unless a format is asked for (``predict
--dicom-out /
--dicomweb / --format / --html``, ``convert``).
"""
