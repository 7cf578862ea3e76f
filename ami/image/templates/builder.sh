#!/bin/bash
# facesite AMI builder (EC2 user data), rendered by ami/image/build.py: installs the worker,
# then powers off; `manage.py buildami` images the stopped instance. A failed step leaves the
# instance running (log: /var/log/facesite-build.log and the console), and buildami times out.
set -euxo pipefail
exec > >(tee -a /var/log/facesite-build.log > /dev/console) 2>&1
dnf install -y python3.11 python3.11-pip tar gzip
useradd --system --home-dir /opt/facesite --shell /sbin/nologin facesite
# An idle worker stops its instance by powering the OS off (instances are launched with
# InstanceInitiatedShutdownBehavior=stop): its IAM role has no EC2 permission at all.
echo 'facesite ALL=(root) NOPASSWD: /usr/bin/systemctl poweroff' > /etc/sudoers.d/facesite-poweroff
chmod 0440 /etc/sudoers.d/facesite-poweroff
visudo -cf /etc/sudoers.d/facesite-poweroff
python3.11 -m venv ${venv_dir}
${pip} boto3==${boto3_version}
# The code, with the instance profile's credentials (the worker role reads the gallery bucket):
# retried, since a just-created role's credentials may be refused for a while (IAM propagation),
# then checked against the sha256 buildami computed, so only that exact commit is installed.
${venv_dir}/bin/python - <<'PY'
${fetch_source}
PY
${install_source}
# Fail the build here, not on every instance, if the engine or its model weights do not load.
FACESITE_AWS_ENDPOINT= FACESITE_VAR_DIR=/tmp ${venv_dir}/bin/python manage.py shell -c '
from recognition.engine import get_engine
get_engine()
'
cat > /etc/systemd/system/${worker_unit} <<'UNIT'
${worker_unit_text}UNIT
systemctl daemon-reload
# Instances launched from the image run their own user data, not this one's.
cloud-init clean --logs
poweroff
