"""Organ-DETR: a 3D detection transformer that finds each organ as one box (class + box per query).

3D residual CNN backbone -> multi-scale encoder (MSA by default; deformable, FPN and single-scale as
ablations) -> deformable two-stage decoder with contrastive denoising (or the original DETR decoder) ->
class / box heads, trained by a set loss whose matcher is one-to-one Hungarian or Dense Query Matching.

* network: :mod:`.network` (``OrganDETR``), built from :mod:`.encoders`, :mod:`.decoder`,
  :mod:`.deformable_decoder`, :mod:`.proposals` (two-stage query selection) and :mod:`.denoising`;
* config: the ``model`` section, ``organdetr.models.config.ModelConfig`` (shared with RetinaNet's backbone);
* matcher: :mod:`.matcher` (``MatcherConfig``, Hungarian / DQM);
* criterion: :mod:`.criterion` (``LossConfig``, ``SetCriterion``);
* postprocess: :mod:`.postprocess` (best query per class -> voxel boxes);
* Detector protocol: :mod:`.detector` (``DETRDetector``), :mod:`.mask_detr` (``model.mask_head``: + masks
  and ``segment``);
* builder: :mod:`.builder` (``build_organdetr_detector``, the registry's; ``build_model``, the network).
"""
