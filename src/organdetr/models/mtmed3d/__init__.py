"""MTMed3D (Li, Iyengar and Xu, arXiv 2511.12373): one shared Swin Transformer encoder serving detection,
segmentation and case classification (any subset of the three tasks), built from MONAI blocks.

* network and Detector protocol: :mod:`.network` (``MTMed3D``: loss, detect, segment, classify);
* heads: :mod:`.heads` (Swin-UNETR decoder, FPN + PANet detection branch, pooled case classifier);
* task balancing: :mod:`.balancing` (``TaskBalancer``: fixed, uncertainty, GradNorm);
* config: :mod:`.config` (``MTMed3DConfig``, the ``mtmed3d`` section);
* matcher, criterion and postprocess of the detection task: MONAI's ATSS matcher, focal + smooth-L1 loss
  and NMS box selector, set up by ``models.blocks.retina``;
* builder: :func:`.network.build_mtmed3d_detector` (the registry's), ``build_mtmed3d``.
"""
