"""`manage.py runscaler`: the app tier's autoscaler, observe -> decide -> act every tick."""

import logging
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from facesite import aws
from scaler.fleet import Fleet
from scaler.loop import ScalerLoop, policy_config
from scaler.observations import ObservationRecorder

logger = logging.getLogger(__name__)


def image_id() -> str:
    # Imported when a launch needs it: the scaler runs (starting and stopping instances) before
    # any image exists, and picks up a rebuilt image without a restart.
    from ami.image.lookup import current_image_id

    return current_image_id()


def user_data() -> str:
    from ami.image.bootscript import worker_user_data

    return worker_user_data()


def build_fleet() -> Fleet:
    names = aws.names()
    return Fleet(
        aws.client("ec2"),
        aws.client("sqs"),
        prefix=names.prefix,
        queue_url=names.request_queue_url,
        image_id=image_id,
        user_data=user_data,
        instance_type=settings.FACESITE_INSTANCE_TYPE,
        # The emulator has no IAM to resolve a profile against; on AWS the workers get their
        # credentials only from it.
        instance_profile="" if settings.AWS_ENDPOINT_URL else names.worker_profile,
        security_group=settings.FACESITE_SECURITY_GROUP,
        key_name=settings.FACESITE_KEY_NAME,
    )


def build_recorder() -> ObservationRecorder:
    names = aws.names()
    return ObservationRecorder(
        aws.client("sqs"),
        response_queue_url=names.response_queue_url,
        dead_letter_queue_url=names.queue_url(names.request_dead_letter_queue),
        interval=settings.FACESITE_OBSERVATION_INTERVAL,
        keep_seconds=settings.FACESITE_OBSERVATION_KEEP_SECONDS,
    )


class Command(BaseCommand):
    help = "Run the app-tier autoscaler: start, launch and stop EC2 workers to match the queue."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="run a single tick and exit (it can scale out, never in: scale-in needs the "
            "queue seen empty for FACESITE_SETTLE_SECONDS)",
        )
        parser.add_argument(
            "--tick",
            type=float,
            default=None,
            metavar="SECONDS",
            help="seconds between ticks (default: FACESITE_SCALER_TICK)",
        )

    def handle(self, *args: Any, once: bool, tick: float | None, **options: Any) -> None:
        # SIGTERM and Ctrl-C end the loop after the current tick, so no action is left half
        # recorded; the command then returns normally (exit status 0). Installed first, so a
        # signal while the clients are being built is honoured too.
        stopping = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda signum, frame: stopping.set())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            tick_seconds = tick or settings.FACESITE_SCALER_TICK
            config = policy_config()
            loop = ScalerLoop(
                build_fleet(),
                config,
                tick_seconds,
                stopping=stopping,
                observer=build_recorder(),
            )
            logger.info(
                "scaler for %s: max %d, %d per instance, warm pool %d, tick %gs, settle %gs",
                settings.FACESITE_PREFIX,
                config.max_instances,
                config.requests_per_instance,
                config.warm_pool,
                tick_seconds,
                config.settle_seconds,
            )
            loop.run(once=once)
            if stopping.is_set():
                logger.info("scaler stopped by signal")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
