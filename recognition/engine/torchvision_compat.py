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


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's contract: indices of the kept boxes, highest score first;
    a box is dropped when its IoU with a kept box is greater than ``iou_threshold``.

    Vectorised over the remaining boxes, looping once per *kept* box. numpy, because its
    per-call overhead on small arrays is a fraction of torch's.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    coords = boxes.detach().to("cpu", torch.float64).numpy()
    x1, y1, x2, y2 = coords.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores.detach().to("cpu", torch.float64).numpy(), kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        height = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        intersection = width * height
        union = areas[best] + areas[rest] - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, intersection / union, 0.0)
        order = rest[iou <= iou_threshold]
    return torch.as_tensor(np.asarray(keep, dtype=np.int64), device=boxes.device)


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
