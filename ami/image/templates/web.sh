#!/bin/bash
# facesite web-instance (EC2 user data), rendered by ami/deploy.py: installs the pinned project
# and runs the web tier (gunicorn behind nginx, which buffers slow clients; the response-queue
# consumers run inside gunicorn) and the scaler as systemd units, `migrate` first. No secret is
# in here: DJANGO_SECRET_KEY and the admin password are read from SSM with the instance's role.
set -euxo pipefail
exec > >(tee -a /var/log/facesite-install.log > /dev/console) 2>&1
dnf install -y python3.11 python3.11-pip tar gzip nginx
useradd --system --home-dir /opt/facesite --shell /sbin/nologin facesite
python3.11 -m venv ${venv_dir}
${pip} boto3==${boto3_version}
install -d -m 0750 -o root -g facesite /etc/facesite
# The code (retried: the role's credentials may be refused for a while), checked by sha256; then
# the secrets, into a file only root and the facesite group can read.
${venv_dir}/bin/python - <<'PY'
${fetch_source}
ssm = boto3.client("ssm", region_name="${region}")
values = {
    name: ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    for name, parameter in (
        ("DJANGO_SECRET_KEY", "${secret_key_parameter}"),
        ("FACESITE_ADMIN_PASSWORD", "${admin_password_parameter}"),
    )
}
values["DJANGO_SUPERUSER_PASSWORD"] = values["FACESITE_ADMIN_PASSWORD"]
with open("/etc/facesite/secrets.env", "w") as secrets:
    secrets.writelines(f"{name}={value}\n" for name, value in values.items())
PY
chown root:facesite /etc/facesite/secrets.env
chmod 0640 /etc/facesite/secrets.env
${install_source}
${heredoc_start}
${env_lines}
${heredoc_end}
chmod 0644 ${env_file}
# The scaler's own role, assumed from this instance's (web) role: botocore does it from this file.
cat > /etc/facesite/aws-scaler.cfg <<'CFG'
[profile scaler]
role_arn = ${scaler_role_arn}
credential_source = Ec2InstanceMetadata
region = ${region}
CFG
chmod 0644 /etc/facesite/aws-scaler.cfg
cat > /etc/systemd/system/facesite-migrate.service <<'UNIT'
${migrate_unit}UNIT
cat > /etc/systemd/system/facesite-web.service <<'UNIT'
${web_unit}UNIT
cat > /etc/systemd/system/facesite-scaler.service <<'UNIT'
${scaler_unit}UNIT
cat > /etc/nginx/conf.d/facesite.conf <<'NGINX'
${nginx_conf}NGINX
systemctl daemon-reload
systemctl enable --now nginx facesite-migrate.service facesite-web.service facesite-scaler.service
