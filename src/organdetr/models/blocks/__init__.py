"""Building blocks shared by the architectures; they import nothing else of ``organdetr.models``.

``backbone`` (3D residual CNN pyramid, ``group_norm``), ``attention`` (SDPA multi-head attention, MLP,
FFN), ``deformable_attention`` (3D multi-scale deformable attention), ``position`` (sine encodings),
``tokens`` (grid <-> token sequence), ``heads`` (box and segmentation heads), ``mask_head`` (decoupled
mask head, masked-attention masks), ``unet`` (nnU-Net-style 3D U-Net), ``retina`` (MONAI's anchor / ATSS /
NMS machinery without torchvision).
"""
