#!/bin/bash
# facesite app-tier boot script (EC2 user data), rendered by ami/image/bootscript.py.
# Configuration only: the worker's AWS credentials come from the instance profile.
set -euo pipefail
install -d -m 0755 /etc/facesite
${heredoc_start}
${env_lines}
${heredoc_end}
chmod 0644 ${env_file}
# enable: the worker also starts on every later boot (a stopped instance that is started again).
# --no-block: cloud-init runs this from a unit of its own; never wait on another unit's start.
systemctl enable --now --no-block ${worker_unit}
