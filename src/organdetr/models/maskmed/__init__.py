"""MaskMed (Xie and Agam, arXiv 2511.15603): a 3D U-Net whose segmentation head is decoupled into shared
object queries, each predicting a class and a class-agnostic mask; boxes are read off the masks.

* network: :mod:`.network` (``MaskMedNetwork``: ``blocks.unet.UNet`` + :mod:`.fsad`, the FSAD-Transformer on
  the bottleneck, + :mod:`.masked_decoder`, the masked multi-scale query head, or the point-wise baseline);
* config: :mod:`.config` (``MaskMedConfig``, the ``maskmed`` section);
* matcher: :mod:`.matcher` (bipartite matching on class + mask BCE + mask Dice costs);
* criterion: :mod:`.criterion` (``MaskSetCriterion``; the mask terms are in ``models.losses``);
* postprocess and Detector protocol: :mod:`.network` (``semantic_logits``, ``MaskMedDetector``, a
  ``models.segmentation_detector.SegmentationDetector``: label map, then largest component per class);
* builder: :func:`.network.build_maskmed_detector` (the registry's), ``build_maskmed``.
"""
