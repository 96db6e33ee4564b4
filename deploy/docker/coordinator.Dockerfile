# Graflow coordinator image, built from the PEX that Pants writes to dist/ (no Python build in here).
#
#   ./pants package services/coordinator
#   docker build -f deploy/docker/coordinator.Dockerfile -t graflow/coordinator .
#
# The PEX is unpacked into a venv at build time (pex-tools), so nothing is extracted at run time
# and the container runs with a read-only root filesystem (only /tmp needs to be writable).
FROM python:3.11-slim AS unpack
RUN pip install --no-cache-dir pex==2.1.137
COPY dist/services.coordinator/coordinator.pex /tmp/app.pex
RUN pex-tools /tmp/app.pex venv --compile --rm pex /opt/graflow
COPY deploy/docker/grpc_health_check.py /opt/graflow/grpc_health_check.py

FROM python:3.11-slim
RUN groupadd --system --gid 10001 graflow \
 && useradd --system --uid 10001 --gid graflow --no-create-home --shell /usr/sbin/nologin graflow
COPY --from=unpack /opt/graflow /opt/graflow
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRAFLOW_COORDINATOR_LOG_FORMAT=json \
    GRAFLOW_COORDINATOR_LISTEN_ADDRESS=0.0.0.0:50052
USER 10001:10001
EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/opt/graflow/bin/python", "/opt/graflow/grpc_health_check.py", "--tls-env", "GRAFLOW_COORDINATOR_", "127.0.0.1:50052"]
ENTRYPOINT ["/opt/graflow/pex"]
