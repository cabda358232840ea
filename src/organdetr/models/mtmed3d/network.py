"""MTMed3D: one shared Swin Transformer encoder serving detection, segmentation and case classification.

After Li, Iyengar and Xu, "MTMed3D: A Multi-Task Transformer-Based Model for 3D Medical Imaging" (arXiv
2511.12373), built from MONAI blocks:

* **encoder**: MONAI ``SwinTransformer`` as ``SwinUNETR`` builds it (its ``swinViT``); five outputs
  ``hidden[l]`` ``[B, F * 2**l, I / 2**(l+1), ...]`` (strides 2, 4, 8, 16, 32; ``F`` = feature size);
* **segmentation** (``seg``): the Swin-UNETR decoder with skip connections - MONAI's own
  ``UnetrBasicBlock`` / ``UnetrUpBlock`` / ``UnetOutBlock`` modules of a ``SwinUNETR``, wired as its
  ``forward`` wires them. Output: ``K + 1`` softmax classes (CE + Dice, the shared
  ``models.losses.segmentation_loss``), or one sigmoid channel per declared region (BraTS WT / TC / ET:
  BCE + batch Dice) - the label map is then decoded from the region bits;
* **detection** (``det``): MONAI ``FeaturePyramidNetwork`` (top-down) over ``det_levels`` plus a PANet
  bottom-up path (:class:`~.heads.PANetBottomUp`), MONAI's RetinaNet classification / regression heads shared
  over the levels, its anchor generator, ATSS matcher, hard-negative sampler, box coder and NMS box
  selector (through :func:`~organdetr.models.blocks.retina.atss_retina_detector`, without
  torchvision);
  sigmoid focal loss (MONAI ``FocalLoss``) + smooth L1;
* **classification** (``cls``): ``densenet`` - a MONAI DenseNet (DenseNet121 by default) on the
  segmentation probabilities and the image, as the authors feed the segmentation output to a DenseNet121;
  or ``pooled`` - global average pools of the three deepest encoder outputs and an MLP. Softmax focal loss
  over the case classes; cases without a label (``case_label == -1``) do not count.

Task balancing (``MTMed3DConfig.balancing``): fixed weights, uncertainty weighting (learned log-variances)
or GradNorm (learned weights; the gradient-norm loss acts on the weights only, see
:class:`~.balancing.TaskBalancer`).

Detector protocol: ``loss(images, targets) -> dict`` (weighted terms ``loss_class`` / ``loss_bbox``
(detection), ``loss_seg``, ``loss_case``, the balancing term ``loss_balance`` and ``loss``; plus the current
task weights ``weight_<task>``, detached, for the training log), ``detect(images)`` (voxel ``xyzxyz`` on the
input grid; a model without ``det`` reads boxes off its masks like ``seg2box``), ``segment(images) ->
[B, I, J, K]`` dense class + 1, ``classify(images) -> [B, C]`` probabilities. ``tasks`` tells callers which
outputs are trained. MTMed3D is its own network: it has no ``.network``.

This module holds :class:`MTMed3D` and its builders; the task heads are in :mod:`.heads`, the task
balancing in :mod:`.balancing`, the ``mtmed3d`` config section in :mod:`.config`.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.losses import DiceLoss, FocalLoss
from monai.networks.nets import DenseNet, SwinUNETR
from torch import Tensor, nn

from organdetr.core.boxes.labels import largest_component_boxes
from organdetr.models.blocks.retina import atss_retina_detector, best_per_class, monai_box_targets
from organdetr.models.config import ModelConfig
from organdetr.models.losses import segmentation_loss
from organdetr.models.mtmed3d.balancing import TaskBalancer
from organdetr.models.mtmed3d.config import MTMED3D_TASKS, MTMed3DConfig
from organdetr.models.mtmed3d.heads import DetectionBranch, PooledClassifier, SwinUNETRDecoder
from organdetr.models.protocols import DetectorSpec

SWIN_STRIDE = 32  # patch size 2 and four patch mergings
GROUP_NORM_GROUPS = 4  # divides every Swin-UNETR width (multiples of 12)


def _check_grid(cfg: MTMed3DConfig, input_size: tuple[int, int, int]) -> None:
    """ValueError when a normalisation layer would see a single voxel per channel while training."""
    if cfg.norm == "instance" and cfg.needs_seg_decoder and min(input_size) // SWIN_STRIDE < 2:
        raise ValueError(
            f"input_size {input_size} leaves {min(input_size) // SWIN_STRIDE} voxel(s) at stride 32, which "
            "instance norm cannot normalise: use a 64^3 grid or mtmed3d.norm=group"
        )
    if "cls" in cfg.tasks and cfg.cls_head == "densenet":
        reduction = 4 * 2 ** (len(cfg.densenet_blocks) - 1)  # stem conv + pool, then one pool per transition
        if min(input_size) // reduction < 2:
            raise ValueError(
                f"the DenseNet's {len(cfg.densenet_blocks)} blocks reduce input_size {input_size} "
                f"{reduction}-fold to a single voxel that batch norm cannot normalise: use fewer "
                "mtmed3d.densenet_blocks or a larger grid"
            )


class MTMed3D(nn.Module):
    """MTMed3D behind the Detector protocol (see the module docstring).

    Args:
        cfg: the ``mtmed3d`` config section.
        in_channels: image channels (from the data).
        num_classes: organ / tumour classes ``K`` (dense indices; detection and segmentation classes).
        input_size: ``(I, J, K)`` voxels, each divisible by 32.
        regions: region name -> dense class indices it unites (region-based segmentation when given).
        case_classes: case-level class names (required for ``cls``).
    """

    def __init__(
        self,
        cfg: MTMed3DConfig,
        in_channels: int,
        num_classes: int,
        input_size: tuple[int, int, int],
        regions: dict[str, tuple[int, ...]] | None = None,
        case_classes: tuple[str, ...] = (),
    ):
        super().__init__()
        if any(int(s) % SWIN_STRIDE for s in input_size):
            raise ValueError(
                f"input_size {tuple(input_size)} must be divisible by {SWIN_STRIDE} (Swin: patch 2, 4 merges)"
            )
        if "cls" in cfg.tasks and len(case_classes) < 2:
            raise ValueError(
                "mtmed3d.tasks has 'cls' but the data has no case-level classes (plans.json case_classes: "
                "dataset.json 'case_classes' + case_labels.json before preprocessing)"
            )
        _check_grid(cfg, tuple(int(v) for v in input_size))
        self.cfg = cfg
        self.tasks = tuple(t for t in MTMED3D_TASKS if t in cfg.tasks)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.case_classes = tuple(case_classes)
        self.region_names = list(regions or {})
        seg_channels = len(self.region_names) or num_classes + 1
        unetr = SwinUNETR(
            in_channels=in_channels,
            out_channels=seg_channels,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            window_size=cfg.window_size,
            feature_size=cfg.feature_size,
            dropout_path_rate=cfg.drop_path,
            norm_name="instance" if cfg.norm == "instance" else ("group", {"num_groups": GROUP_NORM_GROUPS}),
        )
        self.encoder = unetr.swinViT
        widths = [cfg.feature_size * 2**level for level in range(5)]
        self.seg_decoder = SwinUNETRDecoder(unetr) if cfg.needs_seg_decoder else None
        if regions:
            table = torch.zeros(num_classes + 1, len(regions), dtype=torch.float32)
            for r, dense in enumerate(regions.values()):
                table[[d + 1 for d in dense], r] = 1.0
            self.register_buffer("region_table", table, persistent=False)  # [K + 1, R]
        self.det = None
        if "det" in self.tasks:
            self.det = DetectionBranch(
                [widths[level] for level in cfg.det_levels],
                cfg.det_channels,
                len(cfg.anchor_shapes),
                num_classes,
            )
            object.__setattr__(self, "_retina", self._monai_detector(cfg, num_classes))
        self.cls_head: nn.Module | None = None
        if "cls" in self.tasks:
            if cfg.cls_head == "densenet":
                self.cls_head = DenseNet(
                    spatial_dims=3,
                    in_channels=seg_channels + in_channels,
                    out_channels=len(case_classes),
                    init_features=cfg.densenet_init_features,
                    growth_rate=cfg.densenet_growth_rate,
                    block_config=cfg.densenet_blocks,
                )
            else:
                self.cls_head = PooledClassifier(widths[2:], cfg.pooled_hidden, len(case_classes))
            object.__setattr__(
                self, "_case_loss", FocalLoss(to_onehot_y=True, use_softmax=True, gamma=cfg.focal_gamma)
            )
        weights = dict(zip(MTMED3D_TASKS, cfg.task_weights, strict=True))
        self.balancer = TaskBalancer(
            self.tasks, cfg.balancing, tuple(weights[t] for t in self.tasks), cfg.gradnorm_alpha
        )

    @staticmethod
    def _monai_detector(cfg: MTMed3DConfig, num_classes: int):
        """MONAI's detection machinery (anchors, ATSS, sampler, box coder, NMS) - no parameters of its own."""
        anchors = AnchorGeneratorWithAnchorShape(
            feature_map_scales=cfg.det_strides, base_anchor_shapes=cfg.anchor_shapes
        )
        spec = types.SimpleNamespace(
            spatial_dims=3,
            num_classes=num_classes,
            size_divisible=SWIN_STRIDE,
            num_anchors=len(cfg.anchor_shapes),
        )
        retina = atss_retina_detector(
            spec,
            anchors,
            atss_candidates=cfg.atss_candidates,
            negatives_per_image=cfg.negatives_per_image,
            positive_fraction=cfg.positive_fraction,
            pool_size=20,
            min_negatives=16,
            score_thresh=0.0,
            topk_candidates_per_level=1000,
            nms_thresh=cfg.nms_thresh,
            detections_per_image=300,
        )
        retina.set_cls_loss(FocalLoss(reduction="mean", gamma=cfg.focal_gamma))
        return retina

    # ------------------------------------------------------------------ forward

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw outputs: ``seg_logits [B, S, I, J, K]`` (S = K + 1 classes or R regions; when the
        segmentation decoder exists), ``det`` (per-level head maps), ``case_logits [B, C]``."""
        hidden = self.encoder(images, True)
        out: dict[str, Any] = {}
        if self.seg_decoder is not None:
            out["seg_logits"], _ = self.seg_decoder(images, hidden)
        if self.det is not None:
            out["det"] = self.det([hidden[level] for level in self.cfg.det_levels])
        if self.cls_head is not None:
            if self.cfg.cls_head == "densenet":
                seg_probs = self._seg_probabilities(out["seg_logits"])
                out["case_logits"] = self.cls_head(torch.cat([seg_probs, images], dim=1))
            else:
                out["case_logits"] = self.cls_head(hidden[2:])
        return out

    def _seg_probabilities(self, logits: Tensor) -> Tensor:
        return logits.sigmoid() if self.region_names else logits.softmax(1)

    # ------------------------------------------------------------------ losses

    def loss(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        out = self(images)
        task_losses: dict[str, Tensor] = {}
        det_terms: dict[str, Tensor] = {}
        if "det" in self.tasks:
            det_terms = self._det_loss(images, out["det"], targets)
            task_losses["det"] = det_terms["loss_class"] + det_terms["loss_bbox"]
        if "seg" in self.tasks:
            task_losses["seg"] = self._seg_loss(out["seg_logits"], targets)
        if "cls" in self.tasks:
            task_losses["cls"] = self._case_loss_of(out["case_logits"], targets)
        shared = list(self.encoder.patch_embed.parameters())
        weighted, balance, weights = self.balancer.combine(task_losses, shared)
        losses: dict[str, Tensor] = {}
        if "det" in weighted:  # split the weighted detection loss back into its two terms
            scale = weighted["det"] / task_losses["det"].detach().clamp_min(1e-12)
            losses["loss_class"] = det_terms["loss_class"] * scale
            losses["loss_bbox"] = det_terms["loss_bbox"] * scale
        if "seg" in weighted:
            losses["loss_seg"] = weighted["seg"]
        if "cls" in weighted:
            losses["loss_case"] = weighted["cls"]
        losses["loss_balance"] = balance
        losses["loss"] = sum(losses.values())
        for task, weight in zip(self.tasks, weights, strict=True):
            losses[f"weight_{task}"] = weight.detach()
        return losses

    def _det_loss(
        self, images: Tensor, head: dict[str, list[Tensor]], targets: list[dict]
    ) -> dict[str, Tensor]:
        retina = self._retina
        head = {k: list(v) for k, v in head.items()}
        retina.generate_anchors(images, head)
        locations = [x.shape[2:].numel() for x in head["classification"]]
        flat = {k: retina._reshape_maps(v) for k, v in head.items()}
        raw = retina.compute_loss(flat, monai_box_targets(images, targets), retina.anchors, locations)
        return {"loss_class": raw["classification"], "loss_bbox": raw["box_regression"]}

    def _seg_loss(self, logits: Tensor, targets: list[dict]) -> Tensor:
        seg = torch.stack([t["seg"] for t in targets]).to(logits.device).long()
        if not self.region_names:
            return segmentation_loss([logits], seg, self.cfg.seg_dice)
        masks = self.region_table[seg].permute(0, 4, 1, 2, 3)  # [B, R, I, J, K]
        loss = F.binary_cross_entropy_with_logits(logits.float(), masks)
        if self.cfg.seg_dice:
            loss = loss + DiceLoss(sigmoid=True, batch=True)(logits.float(), masks)
        return loss

    def _case_loss_of(self, logits: Tensor, targets: list[dict]) -> Tensor:
        labels = torch.stack([t["case_label"] for t in targets]).to(logits.device).long().reshape(-1)
        known = labels >= 0
        if not known.any():
            return logits.sum() * 0.0
        return self._case_loss(logits[known].float(), labels[known, None])

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        """Label map ``[B, I, J, K]`` int64, dense class + 1 (0 = background). Region outputs are decoded
        to the class whose region membership matches the predicted region bits best."""
        if "seg" not in self.tasks:
            raise RuntimeError("this MTMed3D model was not trained to segment (mtmed3d.tasks lacks 'seg')")
        return self._labels_from_logits(self(images)["seg_logits"])

    def _labels_from_logits(self, logits: Tensor) -> Tensor:
        if not self.region_names:
            return logits.argmax(1)
        bits = (logits > 0).float()  # [B, R, ...]
        table = self.region_table.to(bits)  # [K + 1, R]
        agreement = torch.einsum("kr,br...->bk...", table, bits) + torch.einsum(
            "kr,br...->bk...", 1 - table, 1 - bits
        )
        return agreement.argmax(1)

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """Case-level class probabilities ``[B, C]`` (softmax), classes in ``case_classes`` order."""
        if "cls" not in self.tasks:
            raise RuntimeError("this MTMed3D model was not trained to classify (mtmed3d.tasks lacks 'cls')")
        return self(images)["case_logits"].float().softmax(1)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Per image ``labels [D]``, ``scores [D]``, ``boxes [D, 6]`` voxel xyzxyz on the input grid.

        With ``det``: MONAI box selection (top-k per level, NMS) then the best ``detections_per_class``;
        otherwise the largest connected component of each class in the label map (``seg``), or nothing.
        """
        return self.infer(images)["detections"]

    @torch.no_grad()
    def infer(self, images: Tensor) -> dict[str, Any]:
        """Every trained output from one forward pass: ``detections`` (as :meth:`detect`), ``seg``
        ``[B, I, J, K]`` (with ``seg``), ``case_probs`` ``[B, C]`` (with ``cls``)."""
        out = self(images)
        result: dict[str, Any] = {}
        labels = None
        if "seg" in self.tasks:
            labels = result["seg"] = self._labels_from_logits(out["seg_logits"])
        if "cls" in self.tasks:
            result["case_probs"] = out["case_logits"].float().softmax(1)
        if "det" in self.tasks:
            result["detections"] = self._boxes_from_heads(images, out["det"])
        elif labels is not None:
            result["detections"] = self._boxes_from_labels(images, labels, out["seg_logits"])
        else:
            empty = {
                "labels": torch.zeros(0, dtype=torch.int64),
                "scores": torch.zeros(0),
                "boxes": torch.zeros(0, 6),
            }
            result["detections"] = [
                {k: v.to(images.device) for k, v in empty.items()} for _ in range(len(images))
            ]
        return result

    def _boxes_from_heads(self, images: Tensor, head: dict[str, list[Tensor]]) -> list[dict[str, Tensor]]:
        retina = self._retina
        head = {k: [v.float() for v in maps] for k, maps in head.items()}
        retina.generate_anchors(images, head)
        locations = [x.shape[2:].numel() for x in head["classification"]]
        flat = {k: retina._reshape_maps(v) for k, v in head.items()}
        sizes = [list(images.shape[2:])] * len(images)
        found = retina.postprocess_detections(flat, retina.anchors, sizes, locations)
        return best_per_class(found, self.cfg.detections_per_class)

    def _boxes_from_labels(self, images: Tensor, labels: Tensor, logits: Tensor) -> list[dict[str, Tensor]]:
        if self.region_names:  # class "probability" = the mean probability of the class's regions
            probs = logits.float().sigmoid()
            table = self.region_table.to(probs)
            probs = torch.einsum("kr,br...->bk...", table, probs) / table.sum(1).clamp_min(1).view(
                1, -1, 1, 1, 1
            )
        else:
            probs = logits.float().softmax(1)
        results = []
        for b in range(len(images)):
            found = largest_component_boxes(labels[b].cpu().numpy(), probs[b].cpu().numpy(), self.num_classes)
            results.append({k: torch.from_numpy(v).to(images.device) for k, v in found.items()})
        return results


def build_mtmed3d(
    model_cfg: ModelConfig,
    cfg: MTMed3DConfig,
    num_classes: int,
    input_size: tuple[int, int, int],
    data: Any = None,
) -> MTMed3D:
    """MTMed3D for ``num_classes`` classes on ``input_size``; ``data`` (``DataProperties``) gives the regions
    and case classes; only ``model_cfg.in_channels`` of the ``model`` section is used."""
    regions = dict(getattr(data, "regions", {}) or {})
    case_classes = tuple(getattr(data, "case_classes", ()) or ())
    return MTMed3D(cfg, model_cfg.in_channels, num_classes, tuple(input_size), regions, case_classes)


def build_mtmed3d_detector(spec: DetectorSpec) -> MTMed3D:
    """The registry's builder (:class:`~organdetr.models.protocols.DetectorBuilder`) of ``"mtmed3d"``:
    :func:`build_mtmed3d` with ``arch_cfg`` (defaults when ``None``); its own encoder and strides, so of the
    model section only ``in_channels`` is read; matcher / loss sections are not."""
    cfg = spec.arch_cfg or MTMed3DConfig()
    return build_mtmed3d(spec.model, cfg, spec.num_classes, spec.input_size, spec.data)


__all__ = ["MTMed3D", "build_mtmed3d", "build_mtmed3d_detector"]
