"""The dlib ResNet port: the weights reader's validation, and agreement with dlib itself."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recognition.engine import EmbedderUnavailable, WeightsFormatError, alignment
from recognition.engine.dlib_resnet import (
    CHIP_SIZE,
    default_weights_path,
    load_dlib_resnet,
    network_from_layers,
    read_dlib_layers,
)
from recognition.engine.embedders import DlibEmbedder


@pytest.fixture(scope="module")
def weights() -> bytes:
    return default_weights_path().read_bytes()


@pytest.fixture(scope="module")
def parsed(weights: bytes):
    return read_dlib_layers(weights)


def test_reads_the_whole_network(parsed) -> None:
    mean, layers = parsed
    assert np.allclose(mean, (122.782, 117.001, 104.298), atol=1e-3)
    kinds = [layer.kind for layer in layers]
    assert len(layers) == 108
    assert (kinds.count("con"), kinds.count("affine"), kinds.count("relu")) == (29, 29, 29)
    assert (kinds.count("add_prev"), kinds.count("avg_pool")) == (14, 5)
    assert kinds[0] == "con" and kinds[-1] == "fc"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) - 1000], "unexpected end of file"),
        (lambda data: data[:200], "unexpected end of file"),
        (lambda data: data + b"\x00", "1 bytes left over"),
        (lambda data: data.replace(b"relu_", b"relu#", 1), "unexpected layer type 'relu#'"),
        (lambda data: data.replace(b"loss_metric_2", b"loss_metric_3", 1), "loss_metric_2"),
        (lambda data: b"\x01\x02" + data[2:], "loss layer version"),
        (lambda data: b"not a dlib file at all", "bad integer header"),
    ],
    ids=["truncated", "header-only", "trailing-byte", "layer-name", "loss-name", "version", "junk"],
)
def test_damaged_files_are_refused(weights: bytes, damage, message: str) -> None:
    with pytest.raises(WeightsFormatError, match=message):
        read_dlib_layers(damage(weights))


def test_architecture_mismatches_are_refused(parsed) -> None:
    mean, layers = parsed
    with pytest.raises(WeightsFormatError, match="107 layers"):
        network_from_layers(mean, layers[:-1])

    def changed(index: int, **params) -> list:
        copy = list(layers)
        copy[index] = dataclasses.replace(layers[index], params={**layers[index].params, **params})
        return copy

    first_conv = layers[0].params
    with pytest.raises(WeightsFormatError, match=r"layer 0 \(con\): stride"):
        network_from_layers(mean, changed(0, stride=(1, 1)))
    with pytest.raises(WeightsFormatError, match=r"layer 0 \(con\): filters"):
        network_from_layers(mean, changed(0, weight=first_conv["weight"][:16]))
    with pytest.raises(WeightsFormatError, match=r"layer 3 \(max_pool\)"):
        network_from_layers(mean, changed(3, padding=(1, 1)))
    swapped = list(layers)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(WeightsFormatError, match=r"layer 1 \(affine\): found a relu layer"):
        network_from_layers(mean, swapped)


def test_a_bad_weights_file_makes_the_embedder_unavailable(tmp_path: Path, weights: bytes) -> None:
    damaged = tmp_path / "model.dat"
    damaged.write_bytes(weights[:-4])
    with pytest.raises(EmbedderUnavailable):
        DlibEmbedder(damaged)


@pytest.fixture(scope="module")
def aligned_chips(dlib_engine, five_celebrity_dir: Path, distinct_course_photos) -> np.ndarray:
    """150x150 chips aligned by this engine from real photos: web photos and course images."""
    photos = sorted((five_celebrity_dir / "val").glob("*/*"))[::3] + distinct_course_photos[:3]
    chips = []
    for path in photos:
        image = Image.open(path).convert("RGB")
        for face in dlib_engine.faces(image)[:1]:
            chips.append(
                alignment.align(image, face.landmarks, alignment.DLIB_CHIP_TEMPLATE, CHIP_SIZE)
            )
    assert len(chips) >= 10
    return np.stack(chips)


def test_port_matches_dlib(aligned_chips: np.ndarray) -> None:
    import dlib  # the reference implementation, a test-only dependency
    import torch

    reference = dlib.face_recognition_model_v1(str(default_weights_path()))
    expected = np.array(
        [reference.compute_face_descriptor(np.ascontiguousarray(chip)) for chip in aligned_chips]
    )
    network = load_dlib_resnet()
    with torch.inference_mode():
        batch = torch.from_numpy(aligned_chips).permute(0, 3, 1, 2).float()
        ours = network(batch).numpy()
    cosine = (ours * expected).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.999, cosine
    assert np.abs(ours - expected).max() < 1e-3


def test_engine_embeddings_are_the_ports(dlib_engine, aligned_chips: np.ndarray) -> None:
    """The engine's embedder (channels-last, batched) computes what the plain network gives;
    mirrored, the mean of the chip's and its mirror image's."""
    import torch

    network = load_dlib_resnet()
    mirrored = np.ascontiguousarray(aligned_chips[:, :, ::-1])
    with torch.inference_mode():
        views = [
            network(torch.from_numpy(chips).permute(0, 3, 1, 2).float()).numpy()
            for chips in (aligned_chips, mirrored)
        ]
        engine = dlib_engine.embedder.embed(aligned_chips)
        mirrored_engine = dlib_engine.embedder.embed(aligned_chips, mirror=True)
    assert np.abs(mirrored_engine - (views[0] + views[1]) / 2).max() < 1e-4
    plain = views[0]
    assert engine.dtype == np.float32 and engine.shape == (len(aligned_chips), 128)
    assert np.abs(engine - plain).max() < 1e-4
