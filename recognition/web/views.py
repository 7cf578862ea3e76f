"""HTTP endpoints: the upload (the course contract), the page at `/`, and the health check."""

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from facesite import aws
from recognition.web.responses import consumers_alive
from recognition.web.uploads import UploadRefused, clean_file_name, handle_upload, validate_image

logger = logging.getLogger(__name__)

FIELD = "inputFile"


def plain(text: str, status: int = 200, **headers: str) -> HttpResponse:
    return HttpResponse(
        text, status=status, content_type="text/plain; charset=utf-8", headers=headers
    )


@csrf_exempt  # a machine-to-machine API: clients post files, not forms with a session
@require_http_methods(["GET", "HEAD", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return page(request)
    try:
        file_name, data = read_upload(request)
        validate_image(data)
        reply = handle_upload(file_name, data)
    except UploadRefused as refusal:
        return plain(refusal.message, refusal.status)
    return plain(reply.text, reply.status, **{"X-Request-Id": reply.request_id})


def page(request: HttpRequest) -> HttpResponse:
    """The page people use: drop a photo, see every face boxed and named. It calls the JSON API
    with the key configured for it, or else with the visitor's staff session (and CSRF token);
    without JavaScript its form posts to the course endpoint."""
    staff = request.user.is_authenticated and request.user.is_staff
    key = settings.FACESITE_PAGE_API_KEY
    config = {"key": key, "csrf": get_token(request) if staff and not key else ""}
    return render(
        request,
        "recognition/page.html",
        {"field": FIELD, "page_key": key, "staff": staff, "page_config": config},
    )


def read_upload(request: HttpRequest) -> tuple[str, bytes]:
    limit = settings.FACESITE_MAX_UPLOAD_BYTES
    too_large = UploadRefused(
        413, f"The file is larger than the {limit // (1024 * 1024)} MB limit."
    )
    # Refuse an oversized body before parsing it: the multipart envelope adds a few hundred bytes.
    if int(request.META.get("CONTENT_LENGTH") or 0) > limit + 64 * 1024:
        raise too_large
    try:
        upload = request.FILES.get(FIELD)
    except MultiPartParserError as error:
        raise UploadRefused(400, "The request body is not valid multipart form data.") from error
    if upload is None:
        raise UploadRefused(400, f"Send the image as a multipart file in the field '{FIELD}'.")
    if upload.size > limit:
        raise too_large
    if upload.size == 0:
        raise UploadRefused(400, "The uploaded file is empty.")
    return clean_file_name(upload.name or ""), upload.read()


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """200 once this process can take uploads: storage and queues answer, consumers run."""
    if not consumers_alive():
        return plain("The response consumer is not running in this process.", 503)
    try:
        aws.client("s3").head_bucket(Bucket=aws.names().input_bucket)
        aws.client("sqs").get_queue_attributes(
            QueueUrl=aws.names().request_queue_url, AttributeNames=["QueueArn"]
        )
    except Exception as error:
        # The error names endpoints, buckets and accounts: the log's, not an anonymous client's.
        logger.warning("health check failed: %s", error)
        return plain("Storage or queues are not reachable or not provisioned.", 503)
    return plain("ok")
