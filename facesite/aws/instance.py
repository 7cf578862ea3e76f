"""What a process on an app-tier instance does to its own machine."""

import subprocess

from django.conf import settings

# The image's sudoers rule lets the worker's user run exactly this (ami/image/templates/builder.sh).
POWEROFF = ["sudo", "-n", "/usr/bin/systemctl", "poweroff"]


def stop_own_instance(instance_id: str) -> None:
    """Stop the instance this process runs on.

    On AWS the OS powers itself off: app-tier instances are launched with
    `InstanceInitiatedShutdownBehavior=stop`, so EC2 stops the instance (it stays in the warm
    pool), and the worker role needs no EC2 permission at all, so no worker can stop another's
    instance. systemd stops the worker unit first (Celery's warm shutdown). On the emulator
    nothing can power off a machine the instance runner only plays: StopInstances stands for it.
    """
    from facesite import aws  # at call time: tests replace aws.client

    if settings.AWS_ENDPOINT_URL:
        aws.client("ec2").stop_instances(InstanceIds=[instance_id])
    else:
        subprocess.run(POWEROFF, check=True, timeout=60)
