"""The service API against the real stack (tests/api/conftest.py): every endpoint and error of
DESIGN.md's "The service API (v1)", through S3, the request queue, real workers and gunicorn."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from ami.local.harness import wait_until
from tests.api.conftest import (
    ENROLLED,
    MAX_UPLOAD_BYTES,
    create_key,
    jpeg,
    photos,
    side_by_side,
)

pytestmark = pytest.mark.e2e

BEN, MADONNA = ENROLLED


def image_part(name: str, data: bytes, field: str = "image") -> tuple:
    return (field, (name, data))


def val(five_celebrity_dir, person: str, index: int = 1):
    return photos(five_celebrity_dir / "val", person)[index]


def wall() -> bytes:
    return jpeg(Image.new("RGB", (320, 240), (180, 170, 160)))


def assert_error(reply, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    error = reply.json()["error"]
    assert error["code"] == code and error["message"].strip()
    return error


def history(api, request_id: str) -> tuple:
    rows = api.stack.query(
        "SELECT kind, status, reply_status FROM recognition_uploadrequest WHERE id = ?",
        request_id.replace("-", ""),
    )
    assert len(rows) == 1
    return rows[0]


def test_a_photo_of_two_enrolled_people_names_both_in_their_halves(api, five_celebrity_dir):
    ben, madonna = val(five_celebrity_dir, BEN), val(five_celebrity_dir, MADONNA)
    photo = side_by_side(ben, madonna)
    width = Image.open(io.BytesIO(photo)).width
    middle = Image.open(ben).width * 320 / Image.open(ben).height

    reply = api.call("POST", "/recognize", files=[image_part("pair.jpg", photo)])

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["request_id"] == reply.headers["X-Request-Id"]
    faces = body["faces"]
    assert len(faces) == 2
    by_name = {face["name"]: face for face in faces}
    assert set(by_name) == {BEN, MADONNA}
    assert by_name[BEN]["box"][2] <= middle + 5 and by_name[MADONNA]["box"][0] >= middle - 5
    assert by_name[BEN]["box"][0] >= 0 and by_name[MADONNA]["box"][2] <= width
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces]
    assert areas == sorted(areas, reverse=True), "largest face first"
    assert body["name"] == faces[0]["name"]
    for face in faces:
        subjects = [candidate["subject"] for candidate in face["candidates"]]
        distances = [candidate["distance"] for candidate in face["candidates"]]
        assert sorted(subjects) == sorted(ENROLLED), "one candidate per subject"
        assert distances == sorted(distances) and distances[0] == face["distance"]
        assert face["candidates"][0]["subject"] == face["name"]
        assert 0 < face["score"] <= 1
    assert {"detect", "embed", "match", "total"} <= set(body["timings_ms"])
    assert history(api, body["request_id"]) == ("recognize", "done", 200)


def test_top_k_bounds_the_candidates(api, five_celebrity_dir):
    path = val(five_celebrity_dir, BEN)
    reply = api.call(
        "POST", "/recognize", files=[image_part(path.name, path.read_bytes())], data={"top_k": 1}
    )
    assert reply.status_code == 200, reply.text
    assert [len(face["candidates"]) for face in reply.json()["faces"]] == [1]
    assert reply.json()["name"] == BEN


@pytest.mark.parametrize(
    ("name", "make", "status", "code"),
    [
        ("wall.jpg", wall, 422, "no_face"),
        ("notes.txt", lambda: b"this is not an image at all", 415, "not_an_image"),
        ("cut.jpg", lambda: jpeg(Image.new("RGB", (400, 400), "teal"))[:600], 400, "not_an_image"),
        ("huge.jpg", lambda: b"\xff\xd8" + b"\0" * (MAX_UPLOAD_BYTES + 1024), 413, "too_large"),
    ],
)
def test_recognize_refuses_bad_images_with_json_errors(api, name, make, status, code):
    reply = api.call("POST", "/recognize", files=[image_part(name, make())])
    error = assert_error(reply, status, code)
    if code == "no_face":  # found by the worker: the request went through the pipeline
        assert history(api, error["request_id"]) == ("recognize", "no_face", 422)


def test_recognize_without_an_image_is_a_bad_request(api):
    assert_error(api.call("POST", "/recognize", data={"top_k": "3"}), 400, "bad_request")


def test_detect_gives_boxes_scores_and_five_landmarks(api, five_celebrity_dir):
    photo = side_by_side(val(five_celebrity_dir, BEN), val(five_celebrity_dir, MADONNA))
    reply = api.call("POST", "/detect", files=[image_part("pair.jpg", photo)])
    assert reply.status_code == 200, reply.text
    faces = reply.json()["faces"]
    assert len(faces) == 2
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        assert len(face["landmarks"]) == 5
        assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face["landmarks"])
        assert 0 < face["score"] <= 1
    # Detection's answer for a photo without faces is an empty list, not an error.
    empty = api.call("POST", "/detect", files=[image_part("w.jpg", wall())])
    assert empty.status_code == 200 and empty.json()["faces"] == []


def test_verify_against_a_second_image_or_a_subject(api, five_celebrity_dir):
    ben = val(five_celebrity_dir, BEN, 1).read_bytes()
    ben_again = val(five_celebrity_dir, BEN, 2).read_bytes()
    madonna = val(five_celebrity_dir, MADONNA, 1).read_bytes()

    same = api.call(
        "POST",
        "/verify",
        files=[image_part("a.jpg", ben), image_part("b.jpg", ben_again, "image2")],
    )
    assert same.status_code == 200, same.text
    assert same.json()["match"] is True
    assert same.json()["distance"] <= same.json()["threshold"]
    other = api.call(
        "POST", "/verify", files=[image_part("a.jpg", ben), image_part("b.jpg", madonna, "image2")]
    )
    assert other.json()["match"] is False and other.json()["distance"] > other.json()["threshold"]

    subject = api.call(
        "POST", "/verify", files=[image_part("a.jpg", madonna)], data={"subject": MADONNA}
    )
    assert subject.status_code == 200 and subject.json()["match"] is True
    assert history(api, subject.json()["request_id"]) == ("verify", "done", 200)
    wrong = api.call("POST", "/verify", files=[image_part("a.jpg", madonna)], data={"subject": BEN})
    assert wrong.json()["match"] is False

    nobody = api.call(
        "POST", "/verify", files=[image_part("a.jpg", ben)], data={"subject": "nobody"}
    )
    assert_error(nobody, 404, "not_found")
    neither = api.call("POST", "/verify", files=[image_part("a.jpg", ben)])
    assert_error(neither, 400, "bad_request")
    faceless = api.call(
        "POST", "/verify", files=[image_part("a.jpg", ben), image_part("w.jpg", wall(), "image2")]
    )
    assert "second image" in assert_error(faceless, 422, "no_face")["message"]


def test_examples_say_why_each_refused_image_was_refused(api, five_celebrity_dir):
    good = photos(five_celebrity_dir / "train", "mindy_kaling")[0]
    files = [
        image_part(good.name, good.read_bytes()),
        image_part("notes.txt", b"not an image"),
        image_part("wall.jpg", wall()),
        image_part("huge.jpg", b"\xff\xd8" + b"\0" * (MAX_UPLOAD_BYTES + 1024)),
    ]
    reply = api.call("POST", "/subjects/mindy_kaling/examples", files=files)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert [(item["source"], item["faces"]) for item in body["added"]] == [(good.name, 1)]
    assert {(item["source"], item["code"]) for item in body["refused"]} == {
        ("notes.txt", "not_an_image"),
        ("wall.jpg", "no_face"),
        ("huge.jpg", "too_large"),
    }
    subject = api.call("GET", "/subjects/mindy_kaling", key=api.recognize_key).json()
    assert [(e["id"], e["source"]) for e in subject["examples"]] == [
        (body["added"][0]["id"], good.name)
    ]
    listing = api.call("GET", "/subjects", key=api.recognize_key).json()["subjects"]
    assert {"name": "mindy_kaling", "examples": 1} in listing
    assert {"name": BEN, "examples": 4} in listing


def test_a_photo_of_two_people_enrols_the_face_that_agrees(api, five_celebrity_dir):
    # Madonna's face is the smaller one: her other examples, not the size, pick it.
    photo = side_by_side(
        val(five_celebrity_dir, BEN), val(five_celebrity_dir, MADONNA), 400, right_height=240
    )
    reply = api.call("POST", f"/subjects/{MADONNA}/examples", files=[image_part("pair.jpg", photo)])
    assert reply.status_code == 201, reply.text
    (added,) = reply.json()["added"]
    assert added["faces"] == 2, added
    assert "used face 2 by size: it agrees" in added["note"], added
    # The enrolled face is Madonna's: Ben's face is still named Ben, not Madonna.
    ben = api.call(
        "POST",
        "/recognize",
        files=[image_part("b.jpg", val(five_celebrity_dir, BEN, 2).read_bytes())],
    )
    assert ben.json()["name"] == BEN

    deleted = api.call("DELETE", f"/subjects/{MADONNA}/examples/{added['id']}")
    assert deleted.status_code == 204
    again = api.call("DELETE", f"/subjects/{MADONNA}/examples/{added['id']}")
    assert_error(again, 404, "not_found")


def test_a_deleted_subject_is_not_named_on_the_very_next_request(api, five_celebrity_dir):
    person = "jerry_seinfeld"
    files = [
        image_part(p.name, p.read_bytes()) for p in photos(five_celebrity_dir / "train", person)[:3]
    ]
    assert api.call("POST", f"/subjects/{person}/examples", files=files).status_code == 201
    probe = val(five_celebrity_dir, person, 1).read_bytes()
    before = api.call("POST", "/recognize", files=[image_part("j.jpg", probe)])
    assert before.json()["name"] == person

    assert api.call("DELETE", f"/subjects/{person}").status_code == 204
    after = api.call("POST", "/recognize", files=[image_part("j.jpg", probe)])

    assert after.status_code == 200, after.text
    assert after.json()["name"] != person
    assert person not in {c["subject"] for c in after.json()["faces"][0]["candidates"]}
    assert_error(api.call("GET", f"/subjects/{person}"), 404, "not_found")


def test_subjects_are_created_renamed_and_deleted_over_http(api, five_celebrity_dir):
    assert api.call("POST", "/subjects", json={"name": "elton"}).status_code == 201
    assert_error(api.call("POST", "/subjects", json={"name": "elton"}), 409, "conflict")
    files = [
        image_part(path.name, path.read_bytes())
        for path in photos(five_celebrity_dir / "train", "elton_john")[:3]
    ]
    added = api.call("POST", "/subjects/elton/examples", files=files)
    assert len(added.json()["added"]) == 3
    renamed = api.call("PATCH", "/subjects/elton", json={"name": "Elton John"})
    assert renamed.status_code == 200 and len(renamed.json()["examples"]) == 3
    probe = val(five_celebrity_dir, "elton_john", 1).read_bytes()
    named = api.call("POST", "/recognize", files=[image_part("e.jpg", probe)])
    assert named.json()["name"] == "Elton John"
    assert api.call("DELETE", "/subjects/Elton John").status_code == 204


def test_keys_and_scopes(api):
    assert_error(api.call("GET", "/subjects", key=None), 401, "unauthorized")
    assert_error(api.call("GET", "/subjects", key="fsk_unknown"), 401, "unauthorized")
    by_header = api.call("GET", "/subjects", key=None, headers={"X-API-Key": api.recognize_key})
    assert by_header.status_code == 200
    refused = api.call(
        "POST", "/subjects/x/examples", key=api.recognize_key, files=[image_part("w.jpg", wall())]
    )
    assert_error(refused, 403, "forbidden")
    assert_error(api.call("DELETE", f"/subjects/{BEN}", key=api.recognize_key), 403, "forbidden")
    assert_error(
        api.call("POST", "/subjects", key=api.recognize_key, json={"name": "x"}), 403, "forbidden"
    )
    last_used = api.stack.query("SELECT last_used_at FROM apikeys_apikey WHERE name = 'reader'")[0][
        0
    ]
    assert last_used is not None


def test_the_rate_limit_holds_across_web_processes(api):
    key = create_key(api.stack, "limited", "--rate-limit", "3")
    statuses = [api.call("GET", "/subjects", key=key).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = api.call("GET", "/subjects", key=key)
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_the_schema_and_errors_for_unknown_paths_and_methods(api):
    schema = api.call("GET", "/openapi.json", key=None)
    assert schema.status_code == 200 and schema.json()["openapi"].startswith("3.")
    assert_error(api.call("GET", "/nowhere"), 404, "not_found")
    assert_error(api.call("GET", "/recognize"), 405, "method_not_allowed")


def test_a_reply_that_does_not_come_in_time_is_a_504_with_the_request_id(api, five_celebrity_dir):
    # Far below the engine's time alone: at 0.05 s, a warm pipeline sometimes answered in time.
    url = api.stack.start_web("web-impatient", processes=1, FACESITE_REPLY_TIMEOUT="0.005")
    path = val(five_celebrity_dir, BEN)
    reply = requests.post(
        f"{url}/api/v1/recognize",
        headers={"Authorization": f"Bearer {api.manage_key}"},
        files=[image_part(path.name, path.read_bytes())],
        timeout=60,
    )
    error = assert_error(reply, 504, "timeout")
    assert error["request_id"] == reply.headers["X-Request-Id"]
    assert error["request_id"] in error["message"]
    wait_until(
        lambda: history(api, error["request_id"]) == ("recognize", "done", 504),
        30,
        "the late result to be recorded",
    )
