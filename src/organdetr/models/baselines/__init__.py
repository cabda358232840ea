"""Baselines every Organ-DETR number stands beside; one module each.

* :mod:`.retinanet` - ``"retinanet"``: MONAI's dense anchor detector (ATSS matching, focal / smooth-L1
  losses, NMS: ``models.blocks.retina``) on Organ-DETR's backbone; config ``RetinaNetConfig``, builder
  ``build_retinanet_detector``;
* :mod:`.seg2box` - ``"seg2box"``: MONAI BasicUNet segmentation, boxes = largest component per class
  (``models.segmentation_detector``); config ``Seg2BoxConfig``, builder ``build_seg2box_detector``;
* :mod:`.prior` - the image-blind prior (mean training box per organ), fitted on the cache, not trained:
  no network and no builder.
"""
