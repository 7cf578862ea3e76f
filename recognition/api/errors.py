"""The API's one error shape, {"error": {"code", "message"}}, for everything under /api/v1/:
refusals raised by the views (`ApiError`), ninja's own (validation, authentication) and
Django's (unknown URL, wrong method, an unexpected exception) alike."""

from __future__ import annotations

import logging

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from recognition.lifecycle import error_body

logger = logging.getLogger(__name__)

# The code a status gets when nothing more specific is known.
CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "not_an_image",
    422: "bad_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


def code_for(status: int) -> str:
    return CODE_BY_STATUS.get(status, "bad_request" if status < 500 else "internal_error")


class ApiError(Exception):
    """A refusal with its HTTP status, error code and one sentence for the client."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        return json_error(self.status, self.code, self.message, self.request_id, self.headers)


def json_error(
    status: int,
    code: str,
    message: str,
    request_id: str = "",
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    response = JsonResponse(error_body(code, message, request_id), status=status)
    if request_id:
        response["X-Request-Id"] = request_id
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _validation_message(error: ValidationError) -> str:
    """One sentence from pydantic's error list: where and what, for the first problem."""
    if not error.errors:
        return "The request is not valid."
    first = error.errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "form"))
    field = where.rsplit(".", 1)[-1] if where else ""
    what = first.get("msg", "is not valid")
    if first.get("type") == "missing" and field:
        return f"The field '{field}' is required."
    return f"{field}: {what}." if field else f"{what}."


def install_handlers(api: NinjaAPI) -> None:
    """Replace ninja's default error replies with the API's error shape."""

    @api.exception_handler(ApiError)
    def api_error(request: HttpRequest, error: ApiError) -> HttpResponse:
        return error.response()

    @api.exception_handler(ValidationError)
    def validation_error(request: HttpRequest, error: ValidationError) -> HttpResponse:
        return json_error(400, "bad_request", _validation_message(error))

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request: HttpRequest, error: AuthenticationError) -> HttpResponse:
        return json_error(
            401,
            "unauthorized",
            "Send a valid API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
        )

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, error: HttpError) -> HttpResponse:
        return json_error(error.status_code, code_for(error.status_code), f"{error}.")

    @api.exception_handler(Http404)
    def not_found(request: HttpRequest, error: Http404) -> HttpResponse:
        return json_error(404, "not_found", "Not found.")

    @api.exception_handler(RequestDataTooBig)
    def too_big(request: HttpRequest, error: RequestDataTooBig) -> HttpResponse:
        return json_error(413, "too_large", "The request body is too large.")

    @api.exception_handler(MultiPartParserError)
    def bad_multipart(request: HttpRequest, error: MultiPartParserError) -> HttpResponse:
        return json_error(400, "bad_request", "The request body is not valid multipart data.")

    @api.exception_handler(SuspiciousOperation)
    def suspicious(request: HttpRequest, error: SuspiciousOperation) -> HttpResponse:
        return json_error(400, "bad_request", f"The request was refused: {error}.")

    @api.exception_handler(Exception)
    def unexpected(request: HttpRequest, error: Exception) -> HttpResponse:
        logger.exception("API %s %s failed", request.method, request.path)
        return json_error(500, "internal_error", "The server failed to answer this request.")
