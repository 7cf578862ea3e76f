"""The API's web-tier rules without the pipeline: keys, scopes, the rate limit, the error shape
for every kind of refusal, subjects' bookkeeping, the schema and docs page."""

import subprocess
import sys

import pytest
from django.core.management import call_command

from ami.local.harness import REPO_DIR
from apikeys.keys import create_key, find_key, hash_key, record_use
from apikeys.models import ApiKey
from recognition.api import gallery
from recognition.models import Identity

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch):
    """Gallery snapshots that would go to S3, recorded instead."""
    versions = []
    monkeypatch.setattr(
        gallery.snapshots, "publish", lambda version, data: versions.append(version)
    )
    return versions


def key(scope="manage", rate_limit=None):
    return create_key("test", scope, rate_limit)[1]


def bearer(secret):
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def assert_error(reply, status, code):
    assert reply.status_code == status, reply.content
    assert reply["Content-Type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"].strip()


def test_createapikey_prints_the_key_alone_on_its_last_line_and_stores_only_its_hash(capsys):
    call_command("createapikey", "ci", "--scope", "manage")
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("fsk_") and " " not in secret
    row = ApiKey.objects.get(name="ci")
    assert row.scope == "manage" and row.key_hash == hash_key(secret)
    stored = [str(value) for value in ApiKey.objects.values_list(flat=False).get()]
    assert secret not in stored
    assert find_key(secret) == row


def test_keys_are_refused_without_credentials_unknown_or_revoked(client):
    assert_error(client.get("/api/v1/subjects"), 401, "unauthorized")
    assert_error(client.get("/api/v1/subjects", **bearer("fsk_nope")), 401, "unauthorized")
    secret = key("recognize")
    assert client.get("/api/v1/subjects", HTTP_X_API_KEY=secret).status_code == 200
    assert client.get("/api/v1/subjects", **bearer(secret)).status_code == 200
    ApiKey.objects.update(revoked_at="2026-01-01T00:00:00Z")
    assert_error(client.get("/api/v1/subjects", **bearer(secret)), 401, "unauthorized")


def test_a_recognize_key_may_read_subjects_but_not_change_them(client, published):
    secret = key("recognize")
    reply = client.post(
        "/api/v1/subjects", {"name": "x"}, content_type="application/json", **bearer(secret)
    )
    assert_error(reply, 403, "forbidden")
    assert not Identity.objects.exists()
    assert_error(client.delete("/api/v1/subjects/x", **bearer(secret)), 403, "forbidden")


def test_the_rate_limit_counts_per_key_per_minute_in_the_database(client):
    secret = key("recognize", rate_limit=2)
    other = key("recognize", rate_limit=2)
    assert [client.get("/api/v1/subjects", **bearer(secret)).status_code for _ in range(2)] == [
        200,
        200,
    ]
    refused = client.get("/api/v1/subjects", **bearer(secret))
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert client.get("/api/v1/subjects", **bearer(other)).status_code == 200
    row = ApiKey.objects.get(key_hash=hash_key(secret))
    assert row.last_used_at is not None and row.window_calls == 3


def test_a_new_window_starts_the_count_again():
    row, _ = create_key("w", "recognize", rate_limit=1)
    assert record_use(row, 600, now=120.0).allowed
    second = record_use(row, 600, now=150.0)
    assert not second.allowed and second.retry_after == 30
    assert record_use(row, 600, now=180.0).allowed  # the next minute


def test_the_default_limit_is_the_setting(settings):
    settings.FACESITE_API_RATE_LIMIT = 1
    row, _ = create_key("d", "recognize")
    assert record_use(row, settings.FACESITE_API_RATE_LIMIT, now=0.0).allowed
    assert not record_use(row, settings.FACESITE_API_RATE_LIMIT, now=1.0).allowed


def test_subjects_are_created_listed_read_renamed_and_deleted(client, published):
    auth = bearer(key())
    made = client.post("/api/v1/subjects", {"name": "Ada"}, content_type="application/json", **auth)
    assert made.status_code == 201 and made.json() == {"name": "Ada", "examples": []}
    again = client.post(
        "/api/v1/subjects", {"name": "Ada"}, content_type="application/json", **auth
    )
    assert_error(again, 409, "conflict")
    assert client.get("/api/v1/subjects", **auth).json() == {
        "subjects": [{"name": "Ada", "examples": 0}]
    }
    assert client.get("/api/v1/subjects/Ada", **auth).json() == {"name": "Ada", "examples": []}
    renamed = client.patch(
        "/api/v1/subjects/Ada", {"name": "Grace"}, content_type="application/json", **auth
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "Grace"
    assert_error(client.get("/api/v1/subjects/Ada", **auth), 404, "not_found")
    assert client.delete("/api/v1/subjects/Grace", **auth).status_code == 204
    assert not Identity.objects.exists()
    assert published, "each gallery change republishes the snapshot"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("post", "/api/v1/subjects", "{not json", 400, "bad_request"),
        ("post", "/api/v1/subjects", "{}", 400, "bad_request"),
        ("post", "/api/v1/subjects", '{"name": "a/b"}', 400, "bad_request"),
        ("post", "/api/v1/subjects", '{"name": "   "}', 400, "bad_request"),
        ("post", "/api/v1/recognize", None, 400, "bad_request"),
        ("post", "/api/v1/verify", None, 400, "bad_request"),
        ("get", "/api/v1/nowhere", None, 404, "not_found"),
        ("get", "/api/v1/recognize", None, 405, "method_not_allowed"),
        ("delete", "/api/v1/subjects/nobody/examples/1", None, 404, "not_found"),
        ("patch", "/api/v1/subjects/nobody", '{"name": "x"}', 404, "not_found"),
    ],
)
def test_bad_requests_are_json_errors(client, method, path, body, status, code):
    auth = bearer(key())
    kwargs = {"data": body, "content_type": "application/json"} if body is not None else {}
    assert_error(getattr(client, method)(path, **kwargs, **auth), status, code)


def test_a_bad_top_k_is_refused_before_any_work(client):
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "PNG")
    buffer.seek(0)
    buffer.name = "a.png"
    reply = client.post("/api/v1/recognize", {"image": buffer, "top_k": "0"}, **bearer(key()))
    assert_error(reply, 400, "bad_request")
    assert "top_k" in reply.json()["error"]["message"]


def test_the_schema_needs_no_key_and_the_docs_page_loads_nothing_from_elsewhere(client):
    schema = client.get("/api/v1/openapi.json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    assert {
        "/api/v1/recognize",
        "/api/v1/detect",
        "/api/v1/verify",
        "/api/v1/subjects",
        "/api/v1/subjects/{name}",
        "/api/v1/subjects/{name}/examples",
        "/api/v1/subjects/{name}/examples/{example_id}",
    } <= set(document["paths"])
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/api/v1/openapi.json" in html and "//cdn" not in html and "https://" not in html
    assert client.get("/static/ninja/swagger-ui-bundle.js").status_code == 200


def test_the_admin_lists_keys_with_their_last_use_and_revokes_them(admin_client, client):
    secret = key("recognize")
    client.get("/api/v1/subjects", **bearer(secret))
    row = ApiKey.objects.get()
    listing = admin_client.get("/admin/apikeys/apikey/")
    assert listing.status_code == 200
    html = listing.content.decode()
    assert row.prefix in html and "active" in html and secret not in html
    assert row.last_used_at is not None
    revoked = admin_client.post(
        "/admin/apikeys/apikey/", {"action": "revoke", "_selected_action": [row.pk]}
    )
    assert revoked.status_code == 302
    assert_error(client.get("/api/v1/subjects", **bearer(secret)), 401, "unauthorized")
    assert admin_client.get("/admin/apikeys/apikey/add/").status_code == 403


def test_the_web_tier_api_loads_no_torch():
    code = (
        "import os, sys, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
        "'facesite.settings'); django.setup(); from django.urls import get_resolver; "
        "[get_resolver().resolve(p) for p in ('/api/v1/recognize', '/api/docs', '/')]; "
        "import recognition.api.gallery, recognition.api.calls; print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_DIR, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr
