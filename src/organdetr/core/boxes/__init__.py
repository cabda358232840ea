"""The one home of box maths: every conversion, overlap and extraction of 3D boxes lives in this package.

* :mod:`.ops` - torch, for training (matcher, criterion): ``cxcyczwhd`` <-> ``xyzxyz``, volume, IoU, GIoU;
* :mod:`.iou` - numpy IoU for evaluation, in the plain COCO precision and bit-for-bit MONAI's;
* :mod:`.world` - voxel boxes <-> LPS mm boxes on a grid, the preprocessed grid -> the original scan;
* :mod:`.labels` - boxes from label maps (one per organ) and from a segmenting model's arg-max map;
* :mod:`.raster` - boxes back onto a grid: box masks, the voxel slices a box fills;
* :mod:`.modes` - the sister toolkits' box modes: MONAI (``cccwhd``, ``xxyyzz``, ..., LPS / RAS / image
  coordinates) and nnDetection.

Boxes are ``xyzxyz`` = ``(i0, j0, k0, i1, j1, k1)`` unless a name says otherwise (docs/conventions.md).
"""
