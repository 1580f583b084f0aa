# The cyberstream image: the `cyberstream` command and nothing else (no Java: Kafka runs in
# its own container, docker/kafka/). `make images` builds it; by hand:
#
#   docker build -t cyberstream:0.1.0 .                       # python:3.11-slim, PyPI
#   docker build --build-arg BASE=cyberstream-base/python:bookworm -t cyberstream:0.1.0 .
#                                                             # air-gapped: see scripts/images.sh
#   docker run --rm cyberstream:0.1.0 --help
#
# Works with the legacy builder (Debian's docker.io has no BuildKit client): no RUN --mount.
# docker/wheels/: wheels fetched on the host (`pip download`); when it holds any, pip installs
#   from them alone (no index, no network inside the build).
# docker/ca/: extra CA certificates (*.crt, PEM) for a TLS-intercepting proxy; they join the
#   system store, which pip is told to trust.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH
COPY docker/ca/ /usr/local/share/ca-certificates/cyberstream/
RUN update-ca-certificates >/dev/null
WORKDIR /src
# Dependencies first (their layer is rebuilt only when pyproject.toml changes): exactly the
# pinned [project] dependencies of pyproject.toml, read from it, nothing else.
COPY pyproject.toml README.md ./
COPY docker/wheels/ /wheels/
RUN python3 -m venv /opt/venv \
 && if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
# The project itself, without touching the pinned dependencies; pip check proves they fit.
COPY cyberstream ./cyberstream
COPY producer ./producer
COPY training ./training
COPY detector ./detector
COPY alerts ./alerts
RUN if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && pip install --no-deps . \
 && pip check

# The image: the venv and the trust store of the build stage, no wheels, no sources.
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /etc/ssl/certs/ /etc/ssl/certs/
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# A non-root user owning the directories the commands write: data/, models/, reports/ and
# the run-time state (CYBERSTREAM_HOME). Named volumes mounted there inherit the ownership.
RUN useradd --create-home --uid 10001 --user-group cyberstream \
 && mkdir -p /app/data /app/models /app/reports /app/var \
 && chown -R cyberstream:cyberstream /app/data /app/models /app/reports /app/var
USER cyberstream
# numba compiles the feature kernels once (a few seconds) and caches them: site-packages is
# read-only for this user, so the cache lives with the run-time state.
ENV CYBERSTREAM_HOME=/app/var \
    NUMBA_CACHE_DIR=/app/var/numba

ENTRYPOINT ["cyberstream"]
CMD ["--help"]
