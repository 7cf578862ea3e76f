from django.apps import AppConfig


class ScalerConfig(AppConfig):
    name = "scaler"
    verbose_name = "Autoscaler"
