"""The Organ-DETR network (images -> raw DETR outputs) and its Detector wrapper (loss / detect)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..criterion import SetCriterion
from ..postprocess import postprocess
from .backbone import Backbone3d, group_norm
from .config import ModelConfig
from .decoder import Decoder
from .encoder import FPNEncoder, MSAEncoder, SingleScaleEncoder, flatten_tokens
from .heads import BoxHead, SegmentationHead
from .position import sine_position_3d


class OrganDETR(nn.Module):
    """3D CNN backbone -> 1x1 projections -> encoder (MSA | FPN | single) -> DETR decoder -> heads.

    ``forward(images [B, C_in, I, J, K])`` returns (docs/conventions.md, "Model interface")::

        pred_logits  [B, N, K+1]      class logits, index K = no object
        pred_boxes   [B, N, 6]        normalised cxcyczwhd on the input grid, sigmoid
        aux_outputs  list[dict]       same keys for every earlier decoder layer (cfg.aux_loss)
        seg_logits   list[[B, K+1, i_l, j_l, k_l]]   one per encoded level, finest first;
                                      computed in training mode only (empty list in eval: no cost)

    Positional encoding: fixed 3D sine (``position.sine_position_3d``) plus learned level embeddings.
    The forward has no data-dependent Python control flow, so it traces with ``torch.onnx.export``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.num_classes < 1:
            raise ValueError("ModelConfig.num_classes must be >= 1 (set it from the dataset's class map)")
        self.cfg = cfg
        d = cfg.d_model
        self.backbone = Backbone3d.from_config(cfg)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv3d(c, d, 1), group_norm(d, cfg.norm_groups))
            for c in self.backbone.out_channels
        )
        self.encoder = self._build_encoder(cfg)
        self.levels: tuple[int, ...] = tuple(self.encoder.levels)
        self.memory_level_embed = nn.Parameter(torch.randn(len(self.levels), d) * 0.02)
        self.decoder = Decoder(
            cfg.num_queries, cfg.num_decoder_layers, d, cfg.nhead, cfg.dim_feedforward, cfg.dropout
        )
        self.class_head = nn.Linear(d, cfg.num_classes + 1)
        self.box_head = BoxHead(d)
        self.seg_heads = (
            nn.ModuleList(SegmentationHead(d, cfg.num_classes) for _ in self.levels)
            if cfg.seg_heads
            else nn.ModuleList()
        )

    @staticmethod
    def _build_encoder(cfg: ModelConfig) -> nn.Module:
        if cfg.encoder == "msa":
            return MSAEncoder(
                cfg.num_levels,
                cfg.num_encoder_layers,
                cfg.d_model,
                cfg.nhead,
                cfg.dim_feedforward,
                cfg.dropout,
                cfg.kv_pool,
            )
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

    def forward(self, images: Tensor) -> dict:
        feats = [proj(f) for proj, f in zip(self.input_proj, self.backbone(images), strict=True)]
        pos = [
            sine_position_3d(tuple(f.shape[2:]), self.cfg.d_model, device=f.device, dtype=f.dtype)
            for f in feats
        ]
        encoded = self.encoder(feats, pos)
        memory = torch.cat([flatten_tokens(x) for x in encoded], dim=1)
        memory_pos = torch.cat(
            [flatten_tokens(pos[lvl]) + self.memory_level_embed[i] for i, lvl in enumerate(self.levels)],
            dim=1,
        )
        hs = self.decoder(memory, memory_pos)  # [layers, B, N, D]
        logits, boxes = self.class_head(hs), self.box_head(hs)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "aux_outputs": [], "seg_logits": []}
        if self.cfg.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        if self.training and self.cfg.seg_heads:
            out["seg_logits"] = [head(x) for head, x in zip(self.seg_heads, encoded, strict=True)]
        return out


class DETRDetector(nn.Module):
    """Detector protocol around a DETR-style ``network`` (used for Organ-DETR and its ablations).

    * ``loss(images [B,1,I,J,K], targets) -> dict``: weighted named terms and ``"loss"`` (their sum);
    * ``detect(images) -> list[dict(labels [D], scores [D], boxes [D, 6] voxel xyzxyz on the input grid)]``;
    * ``network``: images -> raw outputs (what ONNX export traces).
    """

    def __init__(self, network: nn.Module, criterion: SetCriterion):
        super().__init__()
        self.network = network
        self.criterion = criterion

    def forward(self, images: Tensor) -> dict:
        return self.network(images)

    def loss(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        return self.criterion(self.network(images), targets)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict]:
        outputs = self.network(images)
        return postprocess(outputs, tuple(images.shape[2:]))
