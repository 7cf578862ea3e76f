"""Make ``import torchvision`` work with this machine's CPU-only torch. Import this module before
anything that imports torchvision (facenet-pytorch does, for NMS and to_tensor).

Why: torchvision 0.28.0 is only published as a CUDA build. Its compiled ops library needs
libtorch_cuda.so, fails to load, and then torchvision's own import dies registering fake kernels
for ``torchvision::nms`` / ``torchvision::qnms``, operators that only that library defines.
MTCNN needs exactly one of those ops, non-maximum suppression, so this module defines the two
operator schemas itself, gives ``nms`` a pure-PyTorch CPU kernel, imports torchvision, and then
tells torchvision that its ops are available (``extension._has_ops``), which lifts the check that
``torchvision.ops.nms`` makes before every call. Any other compiled op (roi_align, deform_conv2d,
...) stays undefined and fails loudly if something calls it.

This is the module's one import-time side effect; it runs once per process.
"""

from __future__ import annotations

import numpy as np
import torch

_OPS_DEFINED_HERE = not hasattr(torch.ops.torchvision, "nms")


# Above this many boxes the pairwise IoU matrix (n^2 values) gets too big to build at once.
_MATRIX_NMS_MAX_BOXES = 1024


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's contract: indices of the kept boxes, highest score first;
    a box is dropped when its IoU with a kept box is greater than ``iou_threshold``. Computed
    in the boxes' own dtype, as torchvision's kernel does.

    numpy rather than torch: MTCNN calls this several times per image on a few dozen boxes,
    where per-call overhead is everything. Up to _MATRIX_NMS_MAX_BOXES boxes, all IoUs are
    computed in one go and the greedy pass only ORs rows; beyond that, IoUs are computed
    against the remaining boxes once per kept box.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    coords = boxes.detach().cpu().numpy()
    order = np.argsort(-scores.detach().cpu().numpy(), kind="stable")
    x1, y1, x2, y2 = coords[order].T
    areas = (x2 - x1) * (y2 - y1)

    def iou(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """(len(rows), len(columns)) IoUs between boxes, by position in score order."""
        width = np.minimum(x2[rows, None], x2[columns]) - np.maximum(x1[rows, None], x1[columns])
        height = np.minimum(y2[rows, None], y2[columns]) - np.maximum(y1[rows, None], y1[columns])
        intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
        union = areas[rows, None] + areas[columns] - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, intersection / union, 0)

    positions = np.arange(len(order))
    keep = []
    if len(order) <= _MATRIX_NMS_MAX_BOXES:
        overlapping = iou(positions, positions) > iou_threshold
        suppressed = np.zeros(len(order), dtype=bool)
        for i in range(len(order)):
            if not suppressed[i]:
                keep.append(i)
                suppressed |= overlapping[i]
    else:
        remaining = positions
        while remaining.size:
            keep.append(remaining[0])
            rest = remaining[1:]
            remaining = rest[iou(remaining[:1], rest)[0] <= iou_threshold]
    return torch.as_tensor(order[keep].astype(np.int64), device=boxes.device)


if _OPS_DEFINED_HERE:
    # Kept at module level: a Library object unregisters its operators when garbage-collected.
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # Only the schema: torchvision registers a fake kernel for it at import; nothing here calls it.
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", _nms, "CPU")

import torchvision  # noqa: E402  (must follow the operator definitions above)
import torchvision.extension  # noqa: E402

if _OPS_DEFINED_HERE:
    torchvision.extension._has_ops = lambda: True

__all__ = ["torchvision"]
