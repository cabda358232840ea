"""Prediction writers only: predictions in the formats of the tools people look at them with (DICOM SEG / SR /
RT Structure Set for a PACS or a planning system, and the DICOMweb client that stores them there; 3D Slicer,
MONAI, nnDetection, a browser).

One module per format (``dicom_seg``, ``dicom_sr``, ``dicom_rtstruct``, ``dicomweb``, ``slicer``,
``monai_datalist``, ``nndetection``, ``html_viewer``), each a thin layer over the field's library for that
format (highdicom, pydicom + contourpy, dicomweb-client, slicerio, MONAI); ``run_outputs`` and ``dicom_out``
gather them for one ``predict`` run.
Code tables the formats need live as data in ``formats/codes/``. Nothing here imports from
``organdetr.inference``; the optional libraries are imported only when a format is asked for (``predict
--dicom-out / --dicomweb / --format / --html``).
"""
