# Graflow web console image, built from the PEX that Pants writes to dist/ (no Python build in here).
#
#   ./pants package services/console
#   docker build -f deploy/docker/console.Dockerfile -t graflow/console:latest .
#
# The PEX is unpacked into a venv at build time (pex-tools), so nothing is extracted at run time
# and the container runs with a read-only root filesystem. The console serves HTTPS on 8480 when
# GRAFLOW_CONSOLE_TLS_CERT_FILE/KEY_FILE are set (docs/console.md).
FROM python:3.11-slim AS unpack
RUN pip install --no-cache-dir pex==2.1.137
COPY dist/services.console/console.pex /tmp/app.pex
RUN pex-tools /tmp/app.pex venv --compile --rm pex /opt/graflow
COPY deploy/docker/http_health_check.py /opt/graflow/http_health_check.py

FROM python:3.11-slim
RUN groupadd --system --gid 10001 graflow \
 && useradd --system --uid 10001 --gid graflow --no-create-home --shell /usr/sbin/nologin graflow
COPY --from=unpack /opt/graflow /opt/graflow
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRAFLOW_CONSOLE_LOG_FORMAT=json \
    GRAFLOW_CONSOLE_HOST=0.0.0.0 \
    GRAFLOW_CONSOLE_PORT=8480
USER 10001:10001
EXPOSE 8480
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/opt/graflow/bin/python", "/opt/graflow/http_health_check.py", "--tls-env", "GRAFLOW_CONSOLE_", "127.0.0.1:8480"]
ENTRYPOINT ["/opt/graflow/pex"]
