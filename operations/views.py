"""The staff dashboard: a page that polls its JSON document and redraws without a reload."""

from pathlib import Path

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from operations.dashboard import dashboard_data

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "operations"
POLL_SECONDS = 2


@require_GET
@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "operations/dashboard.html", {"poll_ms": POLL_SECONDS * 1000})


@require_GET
@never_cache
@staff_member_required
def data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dashboard_data(timezone.now()))
