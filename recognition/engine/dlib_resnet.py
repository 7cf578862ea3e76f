"""dlib's 128-d face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The weights file is read here directly (dlib itself is not a runtime dependency), validated
against the one architecture this module implements, and any mismatch is a WeightsFormatError.

The network, input first (dlib's ``anet_type`` from dnn_face_recognition_ex.cpp):
  150x150 RGB chip, (x - mean) / 256
  conv 7x7/2 32 (no padding), affine, relu, max-pool 3x3/2
  3 x residual(32); down(64) + 3 x residual(64); down(128) + 2 x residual(128);
  down(256) + 2 x residual(256); down(256)
  global mean, fc 256 -> 128 without bias
residual(n): relu(x + affine(conv3x3(relu(affine(conv3x3(x))))))
down(n):     relu(avgpool2x2/2(x) + the same branch with a stride-2 first conv)
A stride-2 3x3 conv has no padding, a stride-1 one pads by 1 (dlib's defaults). When the two
branches of a down block differ in size (the block at 8x8 gives 3x3 against the pool's 4x4, and
later 1x1 against 2x2), dlib adds them top-left aligned and treats missing values as zeros,
which also pads the shortcut's channels up to the branch's.

Each affine (a frozen batch norm: per-channel scale and shift) directly follows a convolution
with a bias, so it is folded into that convolution at load time: same result, one op fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import WeightsFormatError
from .packaged import packaged_model_path

WEIGHTS_FILE_NAME = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
EMBEDDING_DIM = 128

# dlib's enum values: layer_mode::CONV_MODE (per-channel affine), fc_bias_mode::FC_NO_BIAS.
_CONV_MODE = 0
_FC_NO_BIAS = 1

# (output channels, first conv stride) of every residual block, input first.
_BLOCKS: tuple[tuple[int, int], ...] = (
    ((32, 1),) * 3
    + ((64, 2),)
    + ((64, 1),) * 3
    + ((128, 2),)
    + ((128, 1),) * 2
    + ((256, 2),)
    + ((256, 1),) * 2
    + ((256, 2),)
)


def default_weights_path() -> Path:
    """The ResNet's .dat file inside the installed face-recognition-models package."""
    return packaged_model_path(WEIGHTS_FILE_NAME)


# --- reading dlib's serialisation -------------------------------------------------------------


class _Reader:
    """Cursor over dlib's serialisation primitives (dlib/serialize.h, dlib/cuda/tensor.h)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise WeightsFormatError(
                f"unexpected end of file at byte {self.pos} (needed {count} more bytes)"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def int(self) -> int:
        """A packed integer: one byte holding the byte count (high bit: negative), then the
        magnitude's bytes, least significant first."""
        header = self._take(1)[0]
        size = header & 0x0F
        if size == 0 or size > 8 or header & 0x70:
            raise WeightsFormatError(f"bad integer header 0x{header:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if header & 0x80 else value

    def float(self) -> float:
        """dlib writes a float as two packed integers, mantissa and base-2 exponent."""
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # dlib's markers for inf, -inf and nan
            raise WeightsFormatError(f"non-finite hyperparameter at byte {self.pos}")
        return float(mantissa) * 2.0**exponent

    def bool(self) -> bool:
        value = self._take(1)
        if value not in (b"0", b"1"):
            raise WeightsFormatError(f"bad boolean {value!r} at byte {self.pos - 1}")
        return value == b"1"

    def string(self) -> str:
        length = self.int()
        if not 0 <= length <= 256:
            raise WeightsFormatError(f"implausible string length {length} at byte {self.pos}")
        try:
            return self._take(length).decode("ascii")
        except UnicodeDecodeError as exc:
            raise WeightsFormatError(f"non-ASCII layer name at byte {self.pos}") from exc

    def expect_int(self, expected: int, what: str) -> None:
        value = self.int()
        if value != expected:
            raise WeightsFormatError(f"{what}: expected {expected}, found {value}")

    def tensor(self) -> np.ndarray:
        """Version 2, num_samples, k, nr, nc, then the values as little-endian float32."""
        self.expect_int(2, "tensor version")
        shape = tuple(self.int() for _ in range(4))
        if any(size < 0 for size in shape):
            raise WeightsFormatError(f"negative tensor size {shape} at byte {self.pos}")
        count = math.prod(shape)  # exact: np.prod would wrap around on a forged header
        values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        if not np.isfinite(values).all():
            raise WeightsFormatError(f"a tensor of shape {shape} holds NaN or infinite values")
        return values.reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        """An alias_tensor: the shape of a view into a layer's parameter tensor."""
        self.expect_int(1, "alias_tensor version")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


@dataclass
class DlibLayer:
    """One computational layer as read from the file: its kind and parameters/hyperparameters."""

    kind: str  # "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc"
    params: dict[str, object]


def _read_layer_details(reader: _Reader) -> DlibLayer:
    name = reader.string()
    if name == "con_4":
        params = reader.tensor()
        filters, rows, cols = reader.int(), reader.int(), reader.int()
        stride_y, stride_x = reader.int(), reader.int()
        padding_y, padding_x = reader.int(), reader.int()
        weight_shape, bias_shape = reader.alias(), reader.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            reader.float()
        weight_count = int(np.prod(weight_shape))
        flat = params.reshape(-1)
        if flat.size != weight_count + int(np.prod(bias_shape)) or weight_shape[0] != filters:
            raise WeightsFormatError(
                f"con_4: {flat.size} parameters do not fit filters {weight_shape} + {bias_shape}"
            )
        if weight_shape[2:] != (rows, cols):
            raise WeightsFormatError(f"con_4: kernel {rows}x{cols} but filters {weight_shape}")
        return DlibLayer(
            "con",
            {
                "weight": flat[:weight_count].reshape(weight_shape),
                "bias": flat[weight_count:],
                "stride": (stride_y, stride_x),
                "padding": (padding_y, padding_x),
            },
        )
    if name in ("affine_", "affine_2"):
        params = reader.tensor().reshape(-1)
        gamma_shape, beta_shape = reader.alias(), reader.alias()
        mode = reader.int()
        if name == "affine_2" and reader.bool():
            raise WeightsFormatError("a disabled affine layer is not part of this network")
        channels = int(np.prod(gamma_shape))
        if (
            mode != _CONV_MODE
            or int(np.prod(beta_shape)) != channels
            or params.size != 2 * channels
        ):
            raise WeightsFormatError(
                f"affine: mode {mode}, gamma {gamma_shape}, beta {beta_shape}, "
                f"{params.size} parameters (expected a per-channel convolution affine)"
            )
        return DlibLayer("affine", {"gamma": params[:channels], "beta": params[channels:]})
    if name in ("relu_", "relu_2"):
        if name == "relu_2" and reader.bool():
            raise WeightsFormatError("a disabled relu layer is not part of this network")
        return DlibLayer("relu", {})
    if name in ("max_pool_2", "avg_pool_2"):
        window = (reader.int(), reader.int())
        stride = (reader.int(), reader.int())
        padding = (reader.int(), reader.int())
        kind = name.removesuffix("_2")
        return DlibLayer(kind, {"window": window, "stride": stride, "padding": padding})
    if name == "add_prev_":
        return DlibLayer("add_prev", {})
    if name in ("fc_2", "fc_3"):
        outputs, inputs = reader.int(), reader.int()
        params = reader.tensor().reshape(-1)
        weight_shape, bias_shape = reader.alias(), reader.alias()
        bias_mode = reader.int()
        for _ in range(4):
            reader.float()
        if name == "fc_3":
            reader.bool()  # use_bias, redundant with bias_mode
        if (
            bias_mode != _FC_NO_BIAS
            or weight_shape[:2] != (inputs, outputs)
            or params.size != inputs * outputs
        ):
            raise WeightsFormatError(
                f"fc: bias mode {bias_mode}, {inputs}->{outputs}, weights {weight_shape}, "
                f"{params.size} parameters (expected fc_no_bias)"
            )
        # dlib computes x @ W with W stored (inputs, outputs), row-major.
        return DlibLayer("fc", {"weight": params.reshape(inputs, outputs)})
    raise WeightsFormatError(f"unexpected layer type {name!r}")


def _skip_layer_state(reader: _Reader) -> None:
    """After a layer's details dlib stores training state: three flags, then gradient and output
    buffers (empty in a saved model, but read rather than assumed)."""
    for _ in range(3):
        reader.bool()
    for _ in range(3):
        reader.tensor()


def read_dlib_layers(data: bytes) -> tuple[tuple[float, float, float], list[DlibLayer]]:
    """Parse a serialised ``loss_metric<...>`` network: the input mean and every computational
    layer, input first.

    Nesting: each add_layer writes its version, then its whole subnetwork, then its own details;
    tag and skip layers write a version and their subnetwork only. So the file starts with the
    chain of versions from the loss down to the input (2 per layer, 1 per tag/skip, 3 for the
    layer that sits on the input), and the layer details follow in input-first order.
    """
    reader = _Reader(data)
    reader.expect_int(1, "loss layer version")
    loss = reader.string()
    if loss != "loss_metric_2":
        raise WeightsFormatError(f"expected a loss_metric_2 network, found {loss!r}")
    reader.float(), reader.float()  # margin and distance threshold: training-only
    layer_count = 1  # the one written with version 3
    while (version := reader.int()) != 3:
        if version == 2:
            layer_count += 1
        elif version != 1:
            raise WeightsFormatError(f"unexpected layer version {version} at byte {reader.pos}")
    if reader.string() != "input_rgb_image_sized":
        raise WeightsFormatError("expected the input layer input_rgb_image_sized")
    mean = (reader.float(), reader.float(), reader.float())
    size = (reader.int(), reader.int())
    if size != (CHIP_SIZE, CHIP_SIZE):
        raise WeightsFormatError(f"input size {size}, expected {CHIP_SIZE}x{CHIP_SIZE}")

    layers = []
    for index in range(layer_count):
        layers.append(_read_layer_details(reader))
        _skip_layer_state(reader)
        if index == 0:
            reader.expect_int(1, "sample expansion factor")
    if reader.pos != len(data):
        raise WeightsFormatError(
            f"{len(data) - reader.pos} bytes left over after the last layer (byte {reader.pos})"
        )
    return mean, layers


# --- the network --------------------------------------------------------------------------------


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: sum top-left aligned, zeros where one tensor is smaller. ``a`` must be
    the caller's own scratch tensor: of equal shapes, the sum is made in its memory."""
    if a.shape == b.shape:
        return a.add_(b)
    channels, height, width = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[3], 0, height - t.shape[2], 0, channels - t.shape[1]))

    return pad(a) + pad(b)


class _Residual(nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.down = stride == 2
        padding = 0 if self.down else 1
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, padding)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place wherever the tensor is this block's own intermediate (never on x): the same
        # numbers, fewer allocations (2-3% of the network's CPU time at batch 1).
        branch = self.conv2(F.relu(self.conv1(x), inplace=True))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_padded(branch, shortcut), inplace=True)


class DlibResNet(nn.Module):
    """Maps (n, 3, 150, 150) float RGB chips with values 0..255 to (n, 128) descriptors."""

    def __init__(self, mean: tuple[float, float, float] = (122.782, 117.001, 104.298)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 32, 7, 2, 0)
        blocks, channels_in = [], 32
        for channels, stride in _BLOCKS:
            blocks.append(_Residual(channels_in, channels, stride))
            channels_in = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, EMBEDDING_DIM, bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips - self.mean) / 256.0
        x = F.max_pool2d(F.relu(self.conv(x), inplace=True), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


def _expected_layers() -> list[tuple[str, dict[str, object]]]:
    """The architecture as (kind, hyperparameters) in file order, to validate a file against."""

    def con(channels: int, channels_in: int, kernel: int, stride: int, padding: int) -> tuple:
        spec = {
            "shape": (channels, channels_in, kernel, kernel),
            "stride": (stride, stride),
            "padding": (padding, padding),
        }
        return ("con", spec)

    expected = [
        con(32, 3, 7, 2, 0),
        ("affine", {"channels": 32}),
        ("relu", {}),
        ("max_pool", {"window": (3, 3), "stride": (2, 2), "padding": (0, 0)}),
    ]
    channels_in = 32
    for channels, stride in _BLOCKS:
        expected += [
            con(channels, channels_in, 3, stride, 0 if stride == 2 else 1),
            ("affine", {"channels": channels}),
            ("relu", {}),
            con(channels, channels, 3, 1, 1),
            ("affine", {"channels": channels}),
        ]
        if stride == 2:
            expected.append(("avg_pool", {"window": (2, 2), "stride": (2, 2), "padding": (0, 0)}))
        expected += [("add_prev", {}), ("relu", {})]
        channels_in = channels
    expected += [
        ("avg_pool", {"window": (0, 0), "stride": (1, 1), "padding": (0, 0)}),
        ("fc", {"shape": (256, EMBEDDING_DIM)}),
    ]
    return expected


def _check_layer(index: int, layer: DlibLayer, kind: str, spec: dict[str, object]) -> None:
    def fail(detail: str) -> None:
        raise WeightsFormatError(f"layer {index} ({kind}): {detail}")

    if layer.kind != kind:
        fail(f"found a {layer.kind} layer")
    p = layer.params
    if kind == "con":
        if p["weight"].shape != spec["shape"]:  # type: ignore[union-attr]
            fail(f"filters {p['weight'].shape}, expected {spec['shape']}")  # type: ignore[union-attr]
        for key in ("stride", "padding"):
            if p[key] != spec[key]:
                fail(f"{key} {p[key]}, expected {spec[key]}")
    elif kind == "affine":
        if p["gamma"].size != spec["channels"]:  # type: ignore[union-attr]
            fail(f"{p['gamma'].size} channels, expected {spec['channels']}")  # type: ignore[union-attr]
    elif kind in ("max_pool", "avg_pool"):
        if p != spec:
            fail(f"{p}, expected {spec}")
    elif kind == "fc" and p["weight"].shape != spec["shape"]:  # type: ignore[union-attr]
        fail(f"weights {p['weight'].shape}, expected {spec['shape']}")  # type: ignore[union-attr]


def load_dlib_resnet(path: str | Path | None = None) -> DlibResNet:
    """Read and validate the weights file (default: the installed package's), and return the
    network in eval mode."""
    path = Path(path) if path is not None else default_weights_path()
    mean, layers = read_dlib_layers(path.read_bytes())
    return network_from_layers(mean, layers)


def network_from_layers(mean: tuple[float, float, float], layers: list[DlibLayer]) -> DlibResNet:
    """Check parsed layers against the architecture, layer by layer, and build the network."""
    expected = _expected_layers()
    if len(layers) != len(expected):
        raise WeightsFormatError(
            f"the file holds {len(layers)} layers, the network {len(expected)}"
        )
    for index, (layer, (kind, spec)) in enumerate(zip(layers, expected, strict=True)):
        _check_layer(index, layer, kind, spec)

    convs = [layer.params for layer in layers if layer.kind == "con"]
    affines = [layer.params for layer in layers if layer.kind == "affine"]
    fc = next(layer.params for layer in layers if layer.kind == "fc")
    conv_names = ["conv"] + [f"blocks.{i}.conv{j}" for i in range(len(_BLOCKS)) for j in (1, 2)]
    state = {}
    for name, conv, affine in zip(conv_names, convs, affines, strict=True):
        # affine(conv(x)) = gamma * (W x + b) + beta = (gamma W) x + (gamma b + beta)
        gamma, beta = affine["gamma"], affine["beta"]
        state[f"{name}.weight"] = torch.from_numpy(conv["weight"] * gamma[:, None, None, None])
        state[f"{name}.bias"] = torch.from_numpy(conv["bias"] * gamma + beta)
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(fc["weight"].T))
    state["mean"] = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    # Built on the meta device (no memory, no random initialisation): every tensor is then
    # assigned from the file.
    with torch.device("meta"):
        model = DlibResNet(mean)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
