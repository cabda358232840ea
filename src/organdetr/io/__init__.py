"""Reading and writing scans: image files and DICOM series, checked before a voxel is read.

* :mod:`.images` - read/write NIfTI, NRRD, MHA/MHD and DICOM series as a
  :class:`~organdetr.core.volume.Volume`; label maps, TotalSegmentator label tables;
* :mod:`.headers` - what a header claims (bytes, spacing, direction) checked against the memory cap and the
  file;
* :mod:`.dicom_series` - DICOM slice positions (sorting, spacing, gaps) from the headers alone.
"""
