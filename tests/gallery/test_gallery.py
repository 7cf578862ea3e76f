"""Gallery: matching rule, threshold, top-k, ties, versions and the snapshot byte format."""

import io
import math
import time
import zipfile

import numpy as np
import pytest

from recognition.gallery import matching
from recognition.gallery.matching import (
    FORMAT_VERSION,
    UNKNOWN,
    Candidate,
    Gallery,
    GalleryFormatError,
    Match,
    choose_face,
    choose_operating_point,
    disagreeing_examples,
)


def small_gallery() -> Gallery:
    # Two samples of "bob" (one far from the other), one each of "alice" and "carol", in 2-D.
    return Gallery(
        "test",
        ["bob", "alice", "bob", "carol"],
        np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [0.0, 2.0]], dtype=np.float32),
    )


def test_nearest_identity_by_its_nearest_sample():
    [match] = small_gallery().match(np.array([[0.1, 0.0]]), threshold=0.5)
    assert match.name == "bob"
    assert match.distance == pytest.approx(0.1)


def test_beyond_threshold_is_unknown_but_candidates_remain():
    [match] = small_gallery().match(np.array([[0.45, 0.3]]), threshold=0.5)
    assert match.name == UNKNOWN
    assert match.distance == pytest.approx(math.hypot(0.45, 0.3))
    assert match.candidates[0].name == "bob"


def test_threshold_is_inclusive():
    [match] = small_gallery().match(np.array([[0.0, 0.5]]), threshold=0.5)
    assert match.name == "bob"
    assert match.distance == 0.5


def test_top_k_lists_distinct_identities_nearest_first():
    [match] = small_gallery().match(np.array([[0.2, 0.1]]), threshold=1.0, top_k=3)
    assert [c.name for c in match.candidates] == ["bob", "alice", "carol"]
    distances = [c.distance for c in match.candidates]
    assert distances == sorted(distances)
    assert distances[1] == pytest.approx(math.hypot(0.8, 0.1))
    # bob's far sample never shows up as a second "bob" candidate
    assert len({c.name for c in match.candidates}) == 3


def test_top_k_is_capped_by_the_number_of_identities():
    [match] = small_gallery().match(np.array([[0.0, 0.0]]), threshold=1.0, top_k=10)
    assert len(match.candidates) == 3
    [match] = small_gallery().match(np.array([[0.0, 0.0]]), threshold=1.0, top_k=1)
    assert match.candidates == [Candidate("bob", 0.0)]


def test_top_k_must_be_positive():
    with pytest.raises(ValueError):
        small_gallery().match(np.zeros((1, 2)), threshold=1.0, top_k=0)


def test_ties_resolve_by_name_whatever_the_enrolment_order():
    for labels in (["zed", "amy"], ["amy", "zed"]):
        gallery = Gallery("test", labels, np.array([[1.0, 0.0], [-1.0, 0.0]]))
        [match] = gallery.match(np.zeros((1, 2)), threshold=2.0)
        assert match.name == "amy"
        assert [c.name for c in match.candidates] == ["amy", "zed"]
        assert match.candidates[0].distance == match.candidates[1].distance == 1.0


def test_ties_at_the_top_k_cut_keep_the_first_names():
    names = ["e", "b", "d", "a", "c"]
    gallery = Gallery("test", names, np.eye(5))  # every identity at the same distance from 0
    for _ in range(3):
        [match] = gallery.match(np.zeros((1, 5)), threshold=2.0, top_k=2)
        assert [c.name for c in match.candidates] == ["a", "b"]


def test_one_match_per_query_row_and_single_vector():
    gallery = small_gallery()
    matches = gallery.match(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]), 0.5)
    assert [m.name for m in matches] == ["bob", "alice", "carol", UNKNOWN]
    assert gallery.match(np.array([1.0, 0.0]), 0.5)[0].name == "alice"


def test_identical_vectors_are_at_distance_zero():
    # The expanded |q|^2 + |g|^2 - 2q.g form cancels badly for large norms; reported distances
    # must still be exact.
    rng = np.random.default_rng(1)
    embeddings = rng.normal(scale=10.0, size=(50, 128)).astype(np.float32)
    gallery = Gallery("test", [f"p{i}" for i in range(50)], embeddings)
    matches = gallery.match(embeddings, threshold=1e-9)
    assert [m.name for m in matches] == [f"p{i}" for i in range(50)]
    assert all(m.distance == 0.0 for m in matches)


def test_matches_brute_force_nearest_neighbour():
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(300, 16)).astype(np.float32)
    labels = [f"id{i % 37}" for i in range(300)]
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    matches = Gallery("test", labels, embeddings).match(queries, threshold=np.inf, top_k=5)
    for query, match in zip(queries, matches, strict=True):
        distances = np.linalg.norm(embeddings.astype(np.float64) - query, axis=1)
        best = {}
        for label, distance in zip(labels, distances, strict=True):
            best[label] = min(best.get(label, np.inf), distance)
        expected = sorted(best.items(), key=lambda item: (item[1], item[0]))[:5]
        assert [c.name for c in match.candidates] == [name for name, _ in expected]
        assert [c.distance for c in match.candidates] == pytest.approx([d for _, d in expected])


def test_empty_gallery_matches_nothing():
    gallery = Gallery.empty("test")
    assert len(gallery) == 0 and gallery.identities == ()
    assert gallery.match(np.ones((2, 128)), threshold=10.0) == [
        Match(UNKNOWN, math.inf, []),
        Match(UNKNOWN, math.inf, []),
    ]


def test_query_dimension_must_match():
    with pytest.raises(ValueError, match="dimensions"):
        small_gallery().match(np.zeros((1, 3)), threshold=1.0)


@pytest.mark.parametrize(
    ("labels", "embeddings"),
    [
        (["a"], np.zeros((2, 2))),  # fewer labels than rows
        (["a", ""], np.zeros((2, 2))),  # empty label
        (["a"], np.zeros(2)),  # not 2-D
        (["a"], np.array([[np.nan, 0.0]])),  # not finite
    ],
)
def test_rejects_inconsistent_input(labels, embeddings):
    with pytest.raises(ValueError):
        Gallery("test", labels, embeddings)


def test_attributes():
    gallery = small_gallery()
    assert gallery.embedder == "test"
    assert gallery.identities == ("alice", "bob", "carol")
    assert len(gallery) == 4
    assert gallery.labels == ("alice", "bob", "bob", "carol")  # grouped by label, stable
    assert gallery.embeddings.shape == (4, 2) and gallery.embeddings.dtype == np.float32
    assert not gallery.embeddings.flags.writeable


def test_version_is_a_content_hash():
    version = small_gallery().version
    assert len(version) == 64 and int(version, 16) >= 0
    assert small_gallery().version == version
    # Enrolment order of identities does not matter...
    reordered = Gallery(
        "test",
        ["carol", "bob", "alice", "bob"],
        np.array([[0.0, 2.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]),
    )
    assert reordered.version == version
    # ...but the embedder, a label or a value does.
    base = small_gallery()
    assert Gallery("other", base.labels, base.embeddings).version != version
    relabelled = Gallery("test", ["alice", "bob", "bob", "dave"], base.embeddings)
    assert relabelled.version != version
    nudged = base.embeddings.copy()
    nudged[0, 0] += 1e-6
    assert Gallery("test", base.labels, nudged).version != version


def test_bytes_round_trip():
    gallery = small_gallery()
    restored = Gallery.from_bytes(gallery.to_bytes())
    assert restored.version == gallery.version
    assert restored.embedder == gallery.embedder
    assert restored.labels == gallery.labels
    np.testing.assert_array_equal(restored.embeddings, gallery.embeddings)
    empty = Gallery.from_bytes(Gallery.empty("test").to_bytes())
    assert len(empty) == 0 and empty.version == Gallery.empty("test").version


def test_unicode_labels_round_trip():
    gallery = Gallery("test", ["Zoë", "李"], np.eye(2))
    assert Gallery.from_bytes(gallery.to_bytes()).labels == ("Zoë", "李")


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a readable"),
        (b"not a gallery at all", "not a readable"),
        (_npz(x=np.zeros(3)), "no facesite-gallery tag"),
        (_npz(format=np.array("facesite-gallery"), format_version=np.array(99)), "version 99"),
        (_npz(format=np.array("facesite-gallery"), format_version=np.array(1)), "version 1"),
        (
            _npz(format=np.array("facesite-gallery"), format_version=np.array(FORMAT_VERSION)),
            "not a readable",
        ),
        (  # a pickled field is refused, never unpickled
            _npz(
                format=np.array("facesite-gallery"),
                format_version=np.array(FORMAT_VERSION),
                embedder=np.array([{"pickled": True}], dtype=object),
            ),
            "not a readable",
        ),
    ],
)
def test_from_bytes_rejects_other_formats(data, message):
    with pytest.raises(GalleryFormatError, match=message):
        Gallery.from_bytes(data)


def test_from_bytes_rejects_a_truncated_snapshot():
    data = small_gallery().to_bytes()
    with pytest.raises(GalleryFormatError):
        Gallery.from_bytes(data[: len(data) // 2])
    assert zipfile.is_zipfile(io.BytesIO(data))


def test_match_is_fast_on_ten_thousand_samples():
    rng = np.random.default_rng(3)
    gallery = Gallery(
        "test",
        [f"p{i % 2000}" for i in range(10_000)],
        rng.normal(size=(10_000, 128)).astype(np.float32),
    )
    queries = rng.normal(size=(200, 128)).astype(np.float32)
    gallery.match(queries[:1], threshold=0.6)  # warm-up
    # Best of five: other processes on a shared machine only ever add time.
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        gallery.match(queries, threshold=0.6)
        runs.append(time.perf_counter() - started)
    per_face = min(runs) / len(queries)
    assert per_face < 1e-3, f"{per_face * 1e3:.2f} ms per face"


# --- the open-set rule ------------------------------------------------------------------------


def three_people() -> Gallery:
    """A at (0, 0), B at (1, 0), C at (0, 1): three examples each, 0.05 around the centre."""
    spread = np.array([[0.05, 0.0], [-0.05, 0.0], [0.0, 0.05]])
    centres = {"A": (0.0, 0.0), "B": (1.0, 0.0), "C": (0.0, 1.0)}
    labels = [name for name in centres for _ in spread]
    rows = np.vstack([np.array(centre) + spread for centre in centres.values()])
    return Gallery("test", labels, rows)


def test_identify_names_a_clear_match_and_not_a_face_between_two_people():
    gallery = three_people().with_threshold(0.2)
    clear, between = gallery.identify(np.array([[0.02, 0.0], [0.49, 0.0]]), top_k=2)
    assert clear.name == "A" and clear.score > 0.2
    # The distance is to A's mean, (0, 0.05 / 3), not to its nearest example.
    assert clear.distance == pytest.approx(np.hypot(0.02, 0.05 / 3), abs=1e-6)
    # About half-way between A and B: not clearly nearer one than the other, so no name,
    # although a single distance threshold of 0.6 (dlib's) would have named it.
    assert between.name == UNKNOWN and between.score < 0.2
    assert [c.name for c in between.candidates] == ["A", "B"]
    assert between.threshold == 0.2


def test_identify_with_an_empty_gallery_is_unknown():
    [match] = Gallery.empty("test").identify(np.zeros((1, 2)))
    assert match == Match(UNKNOWN, math.inf, [])


def test_operating_point_is_the_quantile_of_impostor_scores():
    impostors = np.arange(100) / 100.0
    point = choose_operating_point(impostors, 0.01)
    assert point.method == "quantile" and point.impostors == 100
    # k = floor(0.01 * 101) = 1: the highest; a 101st impostor lies above it with chance 1/101.
    assert point.threshold == 0.99  # named means score > threshold: none of these gets through
    assert point.impostor_fpir == 0.0
    # k = floor(0.05 * 101) = 5: the fifth highest, 0.95; four of the hundred score above it.
    assert choose_operating_point(impostors, 0.05).threshold == 0.95
    assert choose_operating_point(impostors, 0.05).impostor_fpir == 0.04
    # 0.29 * 100 is not quite 29 in floating point: still the 29th highest.
    assert choose_operating_point(np.arange(99) / 100.0, 0.29).threshold == 0.70


def test_too_few_impostors_give_the_prior():
    prior = choose_operating_point(np.zeros(0), 0.01)
    assert prior.method == "prior" and prior.impostors == 0
    few = choose_operating_point(np.array([-2.0, 5.0]), 0.01)
    assert few.method == "prior" and few.threshold == prior.threshold
    assert few.impostor_fpir == 0.5  # reported, so an operator sees it
    # 99 trials resolve 1% (the highest of 99 is exceeded with chance 1/100); 98 do not.
    assert choose_operating_point(np.full(99, 5.0), 0.01).method == "quantile"
    assert choose_operating_point(np.full(98, 5.0), 0.01).method == "prior"
    with pytest.raises(ValueError):
        choose_operating_point(np.zeros(3), 0.0)


def test_calibration_holds_on_strangers_it_never_saw():
    # People are points in 16-D; photos of a person scatter around it. The gallery holds three
    # photos of 80 people; 3,000 strangers (other people's photos) and fresh photos of the
    # enrolled people probe it.
    rng = np.random.default_rng(7)
    dim, people, scatter = 16, 80, 0.3

    def photos(centres: np.ndarray, count: int) -> np.ndarray:
        return np.repeat(centres, count, axis=0) + rng.normal(
            scale=scatter / np.sqrt(dim), size=(len(centres) * count, dim)
        )

    centres = rng.normal(scale=1 / np.sqrt(dim), size=(people, dim))
    labels = [f"p{i}" for i in range(people) for _ in range(3)]
    gallery = Gallery("test", labels, photos(centres, 3)).calibrated(0.01)
    point = gallery.operating_point
    assert point.method == "quantile" and point.impostors == 240

    strangers = photos(rng.normal(scale=1 / np.sqrt(dim), size=(3000, dim)), 1)
    named = [m.name != UNKNOWN for m in gallery.identify(strangers)]
    assert np.mean(named) <= 0.02  # target 0.01; the calibration has 240 trials to go on
    probes = photos(centres, 2)
    truth = [f"p{i}" for i in range(people) for _ in range(2)]
    right = [m.name == t for m, t in zip(gallery.identify(probes), truth, strict=True)]
    assert np.mean(right) >= 0.9


def test_the_operating_point_travels_in_the_snapshot_and_the_version():
    gallery = three_people().calibrated(0.01)
    restored = Gallery.from_bytes(gallery.to_bytes())
    assert restored.operating_point == gallery.operating_point
    assert restored.version == gallery.version
    assert gallery.with_threshold(0.123).version != gallery.version
    assert (
        Gallery.from_bytes(gallery.with_threshold(0.123).to_bytes()).operating_point.threshold
        == 0.123
    )


def test_choose_face_prefers_the_one_that_agrees():
    faces = np.array([[1.0, 0.0], [0.0, 0.1]])  # the largest first
    assert choose_face(faces, None)[0] == 0
    chosen, why = choose_face(faces, np.array([0.0, 0.0]))
    assert chosen == 1 and "face 2" in why and "agrees" in why
    chosen, why = choose_face(faces, np.array([5.0, 5.0]))  # neither is this person
    assert chosen == 0 and "none agrees" in why


def test_disagreeing_examples_are_the_ones_far_from_the_rest():
    rows = np.array([[0.0, 0.0], [0.65, 0.0], [0.0, 0.1], [2.0, 2.0], [5.0, 5.0], [5.0, 6.0]])
    labels = ["a", "a", "a", "a", "b", "b"]
    flags = disagreeing_examples(labels, rows)
    # "a"'s fourth example is someone else; its second is only unlike (0.65 from) the others;
    # "b" has two examples, so neither can be told wrong.
    assert flags.tolist() == [False, False, False, True, False, False]


def test_first_look_is_the_leading_components_calibrated_alike():
    rng = np.random.default_rng(7)
    labels = [f"person{i // 3}" for i in range(60)]
    fused = Gallery("a+b", labels, rng.normal(size=(60, 6))).calibrated(0.05)
    first = fused.first_look(4)
    assert first.labels == fused.labels
    np.testing.assert_array_equal(first.embeddings, fused.embeddings[:, :4])
    # Its own operating point, for the same target, as if the part were a gallery of its own.
    expected = Gallery("a+b", labels, fused.embeddings[:, :4]).calibrated(0.05)
    assert first.operating_point == expected.operating_point
    assert first.operating_point.threshold != fused.operating_point.threshold
    assert fused.first_look(4) is first  # computed once
    assert fused.first_look(6) is fused
    assert Gallery.empty("a+b").first_look(4).identify(np.zeros((1, 4)))[0].name == UNKNOWN
    # A hand-set point says nothing about the part's scale: the default target holds.
    assert fused.with_threshold(0.0).first_look(4).operating_point.target_fpir == 0.01


def test_enrolment_distances_can_be_taken_over_the_first_components():
    embeddings = np.array([[0.0, 0.0, 9.0], [1.0, 0.0, -9.0]])
    reference = np.array([1.0, 0.0, 9.0])
    assert choose_face(embeddings, reference)[0] == 0  # all three components: the first face
    assert choose_face(embeddings, reference, dims=2)[0] == 1
    labels = ["x", "x", "x"]
    three = np.array([[0.0, 0.0], [0.1, 5.0], [0.2, -5.0]])
    assert disagreeing_examples(labels, three).all()
    assert not disagreeing_examples(labels, three, dims=1).any()


def test_a_snapshot_carries_its_first_looks(monkeypatch):
    rng = np.random.default_rng(8)
    labels = [f"person{i // 3}" for i in range(60)]
    fused = Gallery("a+b", labels, rng.normal(size=(60, 6))).calibrated(0.05)
    before = fused.version
    point = fused.first_look(4).operating_point
    assert fused.version == before  # derived from the content, not part of it

    def no_calibration(*args, **kwargs):
        raise AssertionError("the snapshot's first look was calibrated again")

    loaded = Gallery.from_bytes(fused.to_bytes())
    monkeypatch.setattr(matching, "calibrate", no_calibration)
    assert loaded.first_look(4).operating_point == point
    assert loaded.version == fused.version
