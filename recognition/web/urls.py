from django.urls import path

from recognition.web import views

urlpatterns = [
    path("", views.index, name="upload"),
    path("healthz", views.healthz, name="healthz"),
]
