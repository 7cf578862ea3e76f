"""Under /api/v1/, a reply that is an error but not JSON (Django's 404 for an unknown URL,
ninja's 405 for a wrong method, Django's 500 page) becomes the API's JSON error."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from recognition.api.errors import code_for, json_error

API_PREFIX = "/api/v1/"


def json_errors(get_response: Callable[[HttpRequest], HttpResponse]):
    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        if (
            response.status_code < 400
            or not request.path.startswith(API_PREFIX)
            or response.get("Content-Type", "").startswith("application/json")
        ):
            return response
        status = response.status_code
        if status == 405:
            allowed = response.get("Allow", "")
            message = f"{request.method} is not allowed here; allowed: {allowed}."
            reply = json_error(status, code_for(status), message, headers={"Allow": allowed})
        elif status == 404:
            reply = json_error(status, code_for(status), f"No API endpoint at {request.path}.")
        else:
            reply = json_error(status, code_for(status), f"The request failed ({status}).")
        return reply

    return middleware
