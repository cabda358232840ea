"""The Organ-DETR network: images -> raw DETR outputs.

3D CNN backbone -> 1x1 projections -> encoder (MSA | deformable | FPN | single-scale) -> decoder -> heads,
plus the training-only multiscale segmentation heads on the encoded levels.

Decoders (``ModelConfig.decoder``):

* ``"deformable"`` (default): two-stage query selection (:mod:`.proposals`: the best encoder proposals of
  each class become the initial reference boxes; content queries are learned), contrastive denoising
  queries during training (:mod:`.denoising`), and a deformable decoder with iterative refinement
  (:mod:`.deformable_decoder`). This is the authors' design: a 3D Deformable DETR behind the MSA encoder.
* ``"detr"``: the original DETR decoder (learned queries, dense cross-attention to the memory, boxes
  regressed absolutely through a sigmoid). Kept as the ``detr`` baseline: it has no notion of where a
  query looks, so on a small budget it memorises a position per organ.

``forward(images [B, C_in, I, J, K], targets=None)`` returns (docs/conventions.md, "Model interface")::

    pred_logits  [B, N, C]        class logits (C = K sigmoid classes, or K + 1 with no-object last)
    pred_boxes   [B, N, 6]        normalised cxcyczwhd on the input grid
    aux_outputs  list[dict]       the same for every earlier decoder layer (cfg.aux_loss)
    seg_logits   list[[B, K+1, i_l, j_l, k_l]]   training only, one per encoded level, finest first
    enc_outputs  dict             training only, two-stage: proposal logits [B, S, K], boxes [B, S, 6],
                                  anchors [S, 6], spacing [S, 3] (what the proposal loss needs)
    dn_outputs   dict             training only, with targets and denoising on: "layers" (per decoder
                                  layer pred_logits / pred_boxes of the denoising queries) and "plan"
    pred_masks   [B, N, i, j, k]  model.mask_head only: mask logits of the last layer's queries on the
                                  finest encoded level (.mask_detr)

``targets`` are only read to build the denoising queries. In eval mode the forward has no data-dependent
Python control flow, so it traces with ``torch.onnx.export`` (opset >= 20 for 5-D ``GridSample``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from organdetr.models.blocks.backbone import group_norm
from organdetr.models.blocks.heads import BoxHead, SegmentationHead
from organdetr.models.blocks.mask_head import MaskHead
from organdetr.models.blocks.position import sine_position_3d
from organdetr.models.blocks.tokens import flatten_tokens
from organdetr.models.config import ModelConfig, build_backbone
from organdetr.models.organdetr.decoder import Decoder
from organdetr.models.organdetr.deformable_decoder import DeformableDecoder
from organdetr.models.organdetr.denoising import denoising_attention_mask, noised_queries, plan_denoising
from organdetr.models.organdetr.encoders import DeformableEncoder, FPNEncoder, MSAEncoder, SingleScaleEncoder
from organdetr.models.organdetr.proposals import (
    ProposalHead,
    inverse_sigmoid,
    select_per_class,
    token_anchors,
)


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """The encoder ``cfg.encoder`` names (see :class:`ModelConfig`)."""
    sizes = cfg.num_levels, cfg.num_encoder_layers, cfg.d_model, cfg.nhead, cfg.dim_feedforward, cfg.dropout
    if cfg.encoder == "msa":
        return MSAEncoder(*sizes, cfg.kv_pool)
    if cfg.encoder == "deformable":
        return DeformableEncoder(*sizes, cfg.n_points)
    if cfg.encoder == "fpn":
        return FPNEncoder(cfg.num_levels, cfg.d_model, cfg.norm_groups)
    level = cfg.single_level % cfg.num_levels
    return SingleScaleEncoder(
        level,
        cfg.num_encoder_layers,
        cfg.d_model,
        cfg.nhead,
        cfg.dim_feedforward,
        cfg.dropout,
        cfg.kv_pool[level],
    )


def _check_anchor_sizes(cfg: ModelConfig, memory_levels: int) -> None:
    """ValueError unless ``model.anchor_sizes`` is empty or fits the decoder's levels."""
    if cfg.anchor_sizes and len(cfg.anchor_sizes) != 3 * memory_levels:
        raise ValueError(
            f"model.anchor_sizes has {len(cfg.anchor_sizes)} values; the decoder reads {memory_levels} "
            f"levels, so it needs {3 * memory_levels} (i, j, k per level)"
        )


class OrganDETR(nn.Module):
    """Organ-DETR (see the module docstring). ``class_activation`` is ``"sigmoid"`` or ``"softmax"``."""

    def __init__(self, cfg: ModelConfig, input_size: Sequence[int] | None = None):
        super().__init__()
        if cfg.num_classes < 1:
            raise ValueError("ModelConfig.num_classes must be >= 1 (set it from the dataset's class map)")
        self.cfg = cfg
        d, k = cfg.d_model, cfg.num_classes
        self.class_activation = cfg.class_head
        self.num_queries = cfg.queries_for(k)
        class_outputs = k if cfg.class_head == "sigmoid" else k + 1
        self.backbone = build_backbone(cfg, extra_levels=int(cfg.fine_level), input_size=input_size)
        channels = self.backbone.out_channels[1:] if cfg.fine_level else self.backbone.out_channels
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv3d(c, d, 1), group_norm(d, cfg.norm_groups)) for c in channels
        )
        self.encoder = build_encoder(cfg)
        self.levels: tuple[int, ...] = tuple(self.encoder.levels)
        memory_levels = len(self.levels) + int(cfg.fine_level)
        if cfg.fine_level:  # FPN-style top-down fusion of the stage below the pyramid
            self.fine_proj = nn.Sequential(
                nn.Conv3d(self.backbone.out_channels[0], d, 1), group_norm(d, cfg.norm_groups)
            )
            self.fine_smooth = nn.Sequential(
                nn.Conv3d(d, d, 3, padding=1, bias=False),
                group_norm(d, cfg.norm_groups),
                nn.ReLU(inplace=True),
            )
        if cfg.decoder == "detr":
            self.memory_level_embed = nn.Parameter(torch.randn(len(self.levels), d) * 0.02)
            self.decoder = Decoder(
                self.num_queries, cfg.num_decoder_layers, d, cfg.nhead, cfg.dim_feedforward, cfg.dropout
            )
            self.class_head = nn.Linear(d, class_outputs)
            self.box_head = BoxHead(d)
        else:
            self.decoder = DeformableDecoder(
                cfg.num_decoder_layers,
                d,
                cfg.nhead,
                cfg.dim_feedforward,
                cfg.dropout,
                memory_levels,
                cfg.n_points,
                class_outputs,
                cfg.class_head == "sigmoid",
                cfg.cross_attention_heads,
                cfg.share_box_head,
            )
            self.query_content = nn.Embedding(self.num_queries, d)
            if cfg.two_stage:
                _check_anchor_sizes(cfg, memory_levels)
                self.proposal_head = ProposalHead(d, k)
            else:  # learned reference boxes spread over the grid (DAB-DETR's learnable anchors)
                self.query_reference = nn.Embedding(self.num_queries, 6)
                with torch.no_grad():
                    start = torch.rand(self.num_queries, 6, generator=torch.Generator().manual_seed(0))
                    start[:, :3] = 0.1 + 0.8 * start[:, :3]
                    start[:, 3:] = 0.2
                    self.query_reference.weight.copy_(inverse_sigmoid(start))
            if cfg.denoising:
                self.label_embed = nn.Embedding(k + 1, d)  # + padding slot
        self.seg_heads = (
            nn.ModuleList(SegmentationHead(d, k) for _ in range(memory_levels))
            if cfg.seg_heads
            else nn.ModuleList()
        )
        if cfg.mask_head:  # masks of the last decoder layer's queries on the finest level (.mask_detr)
            self.mask_head = MaskHead(d)
            self._queries: Tensor | None = None  # set by the hook on every forward
            self.decoder.layers[-1].register_forward_hook(self._keep_queries)

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict:
        stages = self.backbone(images)
        fine, stages = (stages[0], stages[1:]) if self.cfg.fine_level else (None, stages)
        feats = [proj(f) for proj, f in zip(self.input_proj, stages, strict=True)]
        pos = [
            sine_position_3d(tuple(f.shape[2:]), self.cfg.d_model, device=f.device, dtype=f.dtype)
            for f in feats
        ]
        encoded = self.encoder(feats, pos)
        if fine is not None:  # the level below the pyramid, fused top-down with the finest encoded one
            top = nn.functional.interpolate(encoded[0], size=fine.shape[2:], mode="nearest")
            encoded = [self.fine_smooth(self.fine_proj(fine) + top), *encoded]
        if self.cfg.decoder == "detr":
            out = self._detr_decode(encoded, pos)
        else:
            out = self._deformable_decode(encoded, targets)
        if self.training and self.cfg.seg_heads:
            out["seg_logits"] = [head(x) for head, x in zip(self.seg_heads, encoded, strict=True)]
        if self.cfg.mask_head:  # the matching queries come last (denoising queries first)
            out["pred_masks"] = self.mask_head(self._queries[:, -self.num_queries :], encoded[0])
        return out

    def _keep_queries(self, module: nn.Module, inputs, output: Tensor) -> None:
        self._queries = output

    def _outputs(self, logits: list[Tensor], boxes: list[Tensor]) -> dict:
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "aux_outputs": [], "seg_logits": []}
        if self.cfg.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        return out

    def _detr_decode(self, encoded: list[Tensor], pos: list[Tensor]) -> dict:
        memory = torch.cat([flatten_tokens(x) for x in encoded], dim=1)
        memory_pos = torch.cat(
            [flatten_tokens(pos[lvl]) + self.memory_level_embed[i] for i, lvl in enumerate(self.levels)],
            dim=1,
        )
        hs = self.decoder(memory, memory_pos)  # [layers, B, N, D]
        logits, boxes = self.class_head(hs), self.box_head(hs)
        return self._outputs(list(logits), list(boxes))

    def _deformable_decode(self, encoded: list[Tensor], targets: list[dict] | None) -> dict:
        memory = torch.cat([flatten_tokens(x) for x in encoded], dim=1)  # [B, S, D]
        shapes = [tuple(int(s) for s in x.shape[2:]) for x in encoded]
        b = memory.shape[0]
        extra: dict = {}
        if self.cfg.two_stage:
            anchors, spacing = token_anchors(shapes, memory.device, torch.float32, self.cfg.anchor_sizes)
            enc_logits, enc_boxes = self.proposal_head(memory, anchors)
            reference = select_per_class(enc_logits, enc_boxes, self.cfg.queries_per_class)[0].detach()
            if self.training:
                extra["enc_outputs"] = {
                    "pred_logits": enc_logits,
                    "pred_boxes": enc_boxes,
                    "anchors": anchors,
                    "spacing": spacing,
                }
        else:
            reference = self.query_reference.weight.sigmoid()[None].expand(b, -1, -1)
        content = self.query_content.weight[None].expand(b, -1, -1)
        attn_mask, plan = None, None
        if self.training and self.cfg.denoising and targets is not None:
            plan = plan_denoising(targets, self.cfg.dn_number)
        if plan is not None:
            labels, dn_boxes, valid = noised_queries(
                plan, targets, self.cfg.num_classes, self.cfg.dn_box_noise, self.cfg.dn_label_noise
            )
            content = torch.cat([self.label_embed(labels), content], dim=1)
            reference = torch.cat([dn_boxes.to(reference.dtype), reference], dim=1)
            attn_mask = denoising_attention_mask(plan, valid, self.num_queries)
        logits, boxes = self.decoder(content, reference, memory, shapes, attn_mask)
        if plan is not None:
            n = plan.size
            extra["dn_outputs"] = {
                "layers": [
                    {"pred_logits": lg[:, :n], "pred_boxes": bx[:, :n]}
                    for lg, bx in zip(logits, boxes, strict=True)
                ],
                "plan": plan,
            }
            logits, boxes = [lg[:, n:] for lg in logits], [bx[:, n:] for bx in boxes]
        return {**self._outputs(logits, boxes), **extra}


__all__ = ["OrganDETR", "build_encoder"]
