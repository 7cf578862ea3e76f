"""The service API, /api/v1/ (DESIGN.md, "The service API (v1)"), on django-ninja: recognise,
detect and verify through the request queue, subjects and examples, keys and scopes."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import File, Form, NinjaAPI, Status, Swagger, UploadedFile
from ninja.responses import codes_4xx, codes_5xx

from recognition.api import calls, gallery
from recognition.api.auth import MANAGE, RECOGNIZE, needs
from recognition.api.errors import ApiError, install_handlers
from recognition.api.schemas import (
    DetectOut,
    ErrorOut,
    ExamplesOut,
    RecognizeOut,
    SubjectIn,
    SubjectList,
    SubjectOut,
    VerifyOut,
)
from recognition.messages import send_api_detect, send_api_recognize, send_api_verify
from recognition.models import UploadRequest

api = NinjaAPI(
    title="facesite",
    version="1",
    description=(
        "Face recognition on an elastic pipeline. Every call but the schema needs a key: "
        "`Authorization: Bearer <key>` or `X-API-Key: <key>` (`manage.py createapikey`). "
        'Errors are `{"error": {"code", "message"}}`.'
    ),
    urls_namespace="api-v1",
    openapi_url="/openapi.json",
    docs_url=None,  # the docs page is /api/docs (recognition/api/urls.py)
    # The bundled Swagger UI, without the validator badge, which would call swagger.io.
    docs=Swagger(settings={"validatorUrl": None}),
)
install_handlers(api)

ERRORS = {codes_4xx: ErrorOut, codes_5xx: ErrorOut}


def _with_request_id(response: HttpResponse, body: dict) -> dict:
    response["X-Request-Id"] = body["request_id"]
    return body


@api.post(
    "/recognize",
    auth=needs(RECOGNIZE),
    response={200: RecognizeOut, **ERRORS},
    summary="Every face in a photo, named, with per-subject candidates",
)
def recognize(
    request: HttpRequest,
    response: HttpResponse,
    image: File[UploadedFile],
    top_k: Form[int] = settings.FACESITE_TOP_K,
) -> dict:
    """Faces largest first; `name` is the largest face's, "Unknown" beyond the threshold."""
    if not 1 <= top_k <= settings.FACESITE_API_MAX_TOP_K:
        raise ApiError(
            400, "bad_request", f"top_k must be from 1 to {settings.FACESITE_API_MAX_TOP_K}."
        )
    picture = calls.read_image(image)
    reply = calls.call(
        UploadRequest.Kind.RECOGNIZE,
        [picture],
        lambda request_id, keys, gallery_version: send_api_recognize(
            request_id, keys[0], gallery_version, top_k
        ),
    )
    return _with_request_id(response, calls.answer(reply))


@api.post(
    "/detect",
    auth=needs(RECOGNIZE),
    response={200: DetectOut, **ERRORS},
    summary="Every face's box, score and five landmarks",
)
def detect(request: HttpRequest, response: HttpResponse, image: File[UploadedFile]) -> dict:
    picture = calls.read_image(image)
    reply = calls.call(
        UploadRequest.Kind.DETECT,
        [picture],
        lambda request_id, keys, gallery_version: send_api_detect(request_id, keys[0]),
    )
    return _with_request_id(response, calls.answer(reply))


@api.post(
    "/verify",
    auth=needs(RECOGNIZE),
    response={200: VerifyOut, **ERRORS},
    summary="Is the face in `image` the person in `image2`, or the enrolled `subject`?",
)
def verify(
    request: HttpRequest,
    response: HttpResponse,
    image: File[UploadedFile],
    image2: File[UploadedFile | None] = None,
    subject: Form[str | None] = None,
) -> dict:
    if (image2 is None) == (not subject):
        raise ApiError(400, "bad_request", "Send either 'image2' or 'subject' with 'image'.")
    pictures = [calls.read_image(image)]
    subject_name = ""
    if image2 is not None:
        pictures.append(calls.read_image(image2, "image2"))
    else:
        subject_name = gallery.clean_subject_name(subject)
        identity = gallery.subject_or_404(subject_name)
        if not gallery.subject_detail(identity)["examples"]:
            raise ApiError(
                400, "bad_request", f"Subject {subject_name!r} has no examples to verify against."
            )
    reply = calls.call(
        UploadRequest.Kind.VERIFY,
        pictures,
        lambda request_id, keys, gallery_version: send_api_verify(
            request_id, keys[0], keys[1] if len(keys) > 1 else "", subject_name, gallery_version
        ),
    )
    return _with_request_id(response, calls.answer(reply))


@api.get("/subjects", auth=needs(RECOGNIZE), response={200: SubjectList, **ERRORS})
def list_subjects(request: HttpRequest) -> dict:
    return {"subjects": gallery.list_subjects()}


@api.post("/subjects", auth=needs(MANAGE), response={201: SubjectOut, **ERRORS})
def create_subject(request: HttpRequest, body: SubjectIn) -> Status:
    identity = gallery.create_subject(gallery.clean_subject_name(body.name))
    return Status(201, gallery.subject_detail(identity))


@api.get("/subjects/{name}", auth=needs(RECOGNIZE), response={200: SubjectOut, **ERRORS})
def read_subject(request: HttpRequest, name: str) -> dict:
    return gallery.subject_detail(gallery.subject_or_404(name))


@api.patch("/subjects/{name}", auth=needs(MANAGE), response={200: SubjectOut, **ERRORS})
def rename_subject(request: HttpRequest, name: str, body: SubjectIn) -> dict:
    identity = gallery.subject_or_404(name)
    renamed = gallery.rename_subject(identity, gallery.clean_subject_name(body.name))
    return gallery.subject_detail(renamed)


@api.delete("/subjects/{name}", auth=needs(MANAGE), response={204: None, **ERRORS})
def delete_subject(request: HttpRequest, name: str) -> Status:
    gallery.delete_subject(gallery.subject_or_404(name))
    return Status(204, None)


@api.post(
    "/subjects/{name}/examples",
    auth=needs(MANAGE),
    response={201: ExamplesOut, **ERRORS},
    summary="Add one or more example photos (several 'image' parts); creates the subject",
)
def add_examples(request: HttpRequest, name: str, image: File[list[UploadedFile]]) -> Status:
    """Each image is embedded on the app tier. An image with several faces enrols the face
    that agrees with the subject's other examples (else the largest), and says so."""
    if len(image) > settings.FACESITE_API_MAX_IMAGES:
        raise ApiError(
            400,
            "bad_request",
            f"At most {settings.FACESITE_API_MAX_IMAGES} images may be added in one call.",
        )
    subject_name = gallery.clean_subject_name(name)
    identity, _ = gallery.Identity.objects.get_or_create(name=subject_name)
    return Status(201, gallery.add_examples(identity, list(image)))


@api.delete(
    "/subjects/{name}/examples/{example_id}",
    auth=needs(MANAGE),
    response={204: None, **ERRORS},
)
def delete_example(request: HttpRequest, name: str, example_id: int) -> Status:
    gallery.delete_example(gallery.subject_or_404(name), example_id)
    return Status(204, None)
