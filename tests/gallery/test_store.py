"""recognition.gallery.store: FaceSample rows in, content-addressed GallerySnapshot rows out."""

import numpy as np
import pytest

from recognition.gallery import store
from recognition.gallery.store import NewSample
from recognition.models import FaceSample, GallerySnapshot, Identity

pytestmark = pytest.mark.django_db

EMBEDDER = "test-embedder"


def sample(label: str, source: str, *values: float) -> NewSample:
    return NewSample(label, source, np.array(values, dtype=np.float32))


def test_save_adds_then_updates_in_place():
    first = store.save_samples(
        EMBEDDER, [sample("ann", "ann/1.jpg", 1, 0), sample("bo", "bo/1.jpg", 0, 1)]
    )
    assert (first.added, first.updated, first.unchanged) == (2, 0, 0)
    again = store.save_samples(
        EMBEDDER, [sample("ann", "ann/1.jpg", 1, 0), sample("bo", "bo/1.jpg", 0, 2)]
    )
    assert (again.added, again.updated, again.unchanged) == (0, 1, 1)
    assert FaceSample.objects.count() == 2
    row = FaceSample.objects.get(source_image="bo/1.jpg")
    np.testing.assert_array_equal(store.embedding_from_bytes(row.embedding), [0, 2])


def test_same_source_under_another_embedder_is_another_sample():
    store.save_samples(EMBEDDER, [sample("ann", "ann/1.jpg", 1, 0)])
    store.save_samples("other", [sample("ann", "ann/1.jpg", 1, 0, 0)])
    assert FaceSample.objects.count() == 2
    assert Identity.objects.count() == 1


def test_replace_drops_only_that_embedders_samples_of_those_identities():
    store.save_samples(
        EMBEDDER,
        [
            sample("ann", "ann/1.jpg", 1, 0),
            sample("ann", "ann/2.jpg", 1, 1),
            sample("bo", "bo/1.jpg", 0, 1),
        ],
    )
    store.save_samples("other", [sample("ann", "ann/1.jpg", 1, 0, 0)])
    result = store.save_samples(
        EMBEDDER, [sample("ann", "ann/3.jpg", 2, 2)], replace_labels=["ann"]
    )
    assert (result.removed, result.added) == (2, 1)
    assert sorted(
        FaceSample.objects.filter(embedder=EMBEDDER).values_list("source_image", flat=True)
    ) == [
        "ann/3.jpg",
        "bo/1.jpg",
    ]
    assert FaceSample.objects.filter(embedder="other").count() == 1


def test_gallery_from_samples_holds_one_embedders_rows():
    store.save_samples(EMBEDDER, [sample("bo", "bo/1.jpg", 0, 1), sample("ann", "ann/1.jpg", 1, 0)])
    store.save_samples("other", [sample("cy", "cy/1.jpg", 1, 1, 1)])
    gallery = store.gallery_from_samples(EMBEDDER)
    assert gallery.embedder == EMBEDDER
    assert gallery.labels == ("ann", "bo")
    np.testing.assert_array_equal(gallery.embeddings, [[1, 0], [0, 1]])
    assert len(store.gallery_from_samples("nobody")) == 0


def test_snapshots_are_content_addressed_and_latest_follows_the_content():
    assert store.latest_snapshot(EMBEDDER) is None
    assert len(store.current_gallery(EMBEDDER)) == 0

    store.save_samples(EMBEDDER, [sample("ann", "ann/1.jpg", 1, 0)])
    first, gallery = store.publish_snapshot(EMBEDDER)
    assert first.version == gallery.version
    assert (first.identities, first.samples, first.embedder) == (1, 1, EMBEDDER)
    assert store.snapshot_gallery(first).version == first.version

    # Publishing unchanged content reuses the row.
    again, _ = store.publish_snapshot(EMBEDDER)
    assert again.pk == first.pk and GallerySnapshot.objects.count() == 1

    store.save_samples(EMBEDDER, [sample("bo", "bo/1.jpg", 0, 1)])
    second, _ = store.publish_snapshot(EMBEDDER)
    assert second.version != first.version
    assert store.latest_snapshot(EMBEDDER).pk == second.pk
    assert store.current_gallery(EMBEDDER).identities == ("ann", "bo")

    # Going back to the first content makes the first snapshot the latest again.
    store.save_samples(EMBEDDER, [sample("ann", "ann/1.jpg", 1, 0)], replace_labels=["bo"])
    back, _ = store.publish_snapshot(EMBEDDER)
    assert back.pk == first.pk and GallerySnapshot.objects.count() == 2
    assert store.latest_snapshot(EMBEDDER).pk == first.pk
    assert store.latest_snapshot("other") is None
