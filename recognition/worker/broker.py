"""The worker's broker transport: kombu's SQS transport, using the process's shared SQS client.

kombu builds its SQS client from a boto3 session of its own, which parses botocore's service
models again: about half the CPU a worker forked by the local runner spends before it consumes,
and seconds of a cold boot on a small instance. Its client also has botocore's default retry
policy instead of facesite's one (facesite.aws.clients). Receiving, acknowledging and everything
else stay kombu's; only where the client comes from changes, and only when the broker URL names
the endpoint, region and credentials facesite's own clients use (a broker URL configured
elsewhere gets kombu's client, as before).
"""

from typing import Any

from django.conf import settings
from kombu.transport import SQS

from facesite import aws


def is_facesites_sqs(endpoint_url: str | None, region: str, access_key_id: str | None) -> bool:
    """Whether kombu's connection settings are those of facesite's shared SQS client."""
    credentials = settings.AWS_CREDENTIALS
    return (
        endpoint_url == settings.AWS_ENDPOINT_URL
        and region == settings.AWS_REGION
        and (access_key_id or None) == (credentials[0] if credentials else None)
    )


class Channel(SQS.Channel):
    def new_sqs_client(
        self,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        session_token: str | None = None,
    ) -> Any:
        if session_token is None and is_facesites_sqs(self.endpoint_url, region, access_key_id):
            return aws.client("sqs")
        return super().new_sqs_client(region, access_key_id, secret_access_key, session_token)


class Transport(SQS.Transport):
    Channel = Channel


# How a Celery app names this transport (its broker_transport setting).
TRANSPORT = f"{__name__}:Transport"
