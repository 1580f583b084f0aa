# The cyberstream image: the `cyberstream` command and nothing else (no Java: Kafka runs in
# its own container, see docker-compose.yml).
#
#   docker build -t cyberstream .
#   docker run --rm cyberstream --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

WORKDIR /app

# Dependencies first (their layer is rebuilt only when pyproject.toml changes): exactly the
# pinned [project] dependencies of pyproject.toml, read from it, nothing else.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# The project itself, without touching the pinned dependencies; pip check proves they fit.
COPY cyberstream ./cyberstream
COPY producer ./producer
COPY training ./training
COPY detector ./detector
COPY alerts ./alerts
RUN pip install --no-deps . \
 && pip check \
 && rm -rf build ./*.egg-info

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
