from django.apps import AppConfig


class AmiConfig(AppConfig):
    name = "ami"
    verbose_name = "Worker image and local instances"
