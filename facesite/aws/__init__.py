"""facesite's one door to AWS: the names of this deployment's resources (`names`), boto3 clients
with the one retry policy (`client`), typed readers (`readers`) and provisioning (`provision`).

Every tier (web, worker, scaler, image build, local stack) and the tests reach AWS through here,
so the emulator-or-AWS switch, the prefix and the retry policy are each decided once.
"""

from django.conf import settings

from facesite.aws.clients import client, reset_clients
from facesite.aws.names import Names


def names() -> Names:
    """The names of the configured deployment, derived from the current settings."""
    return Names(
        prefix=settings.FACESITE_PREFIX,
        region=settings.AWS_REGION,
        account=settings.FACESITE_AWS_ACCOUNT_ID,
        sqs_endpoint=settings.AWS_ENDPOINT_URL or "",
        instance_profile_override=settings.FACESITE_INSTANCE_PROFILE,
        bucket_suffix=settings.FACESITE_BUCKET_SUFFIX,
    )


__all__ = ["Names", "client", "names", "reset_clients"]
