# kstats-proxy as a container image.
#
# Two stages on the same base: the first installs the package and its
# `fast` extra (uvloop) into a virtual environment at /opt/kstats, the
# second copies only that environment and the shipped rules. Every
# dependency comes as a binary wheel, so neither stage needs a compiler;
# pip and setuptools are removed from the environment before it is copied.
#
# The image runs with a read-only root filesystem: the only directory it
# writes is the spool, /var/spool/kstats, which must be a writable volume
# (an emptyDir or a PersistentVolumeClaim in Kubernetes; `--read-only -v
# kstats-spool:/var/spool/kstats` with podman or docker).
#
# Defaults are environment variables, not ENTRYPOINT flags, so that both
# `-e KSTATS_UPSTREAM=...` and extra arguments after the image name
# change them (a flag on the command line wins over its variable).

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md /src/
COPY proxy /src/proxy
COPY rules /src/rules

# proxy/shipped_rules is a symlink to ../rules in the repository; the wheel
# build follows it, so the package carries its own copy of the rules too
RUN python -m venv /opt/kstats \
    && /opt/kstats/bin/pip install '/src[fast]' \
    && /opt/kstats/bin/pip uninstall --yes pip setuptools \
    && /opt/kstats/bin/kstats-proxy check /src/rules


FROM python:3.11-slim

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="kstats-proxy" \
      org.opencontainers.image.description="A reverse proxy that adds userId, applicationName and playbackContext to legacy Kaltura player statistics events" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

# a numeric, unprivileged user, so that Kubernetes' runAsNonRoot can check
# it without looking the name up; the spool directory is theirs so that a
# fresh volume mounted there starts writable
RUN groupadd --system --gid 10001 kstats \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin kstats \
    && mkdir -p /var/spool/kstats \
    && chown 10001:10001 /var/spool/kstats

COPY --from=build /opt/kstats /opt/kstats
COPY rules /etc/kstats/rules

# bytecode was compiled at build time; a read-only root could not take more
ENV PATH=/opt/kstats/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KSTATS_RULES=/etc/kstats/rules \
    KSTATS_LISTEN=0.0.0.0:8080 \
    KSTATS_ADMIN_LISTEN=0.0.0.0:8081 \
    KSTATS_SPOOL=/var/spool/kstats

VOLUME ["/var/spool/kstats"]
USER 10001:10001
EXPOSE 8080 8081

# /healthz on the admin port; the port follows KSTATS_ADMIN_LISTEN, so an
# image run with another admin port still checks the right one
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('KSTATS_ADMIN_LISTEN', ':8081').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# the proxy is PID 1 and handles SIGTERM (drain), SIGINT and SIGHUP (reload)
# itself; it starts no child processes, so no init is needed to reap them
STOPSIGNAL SIGTERM
ENTRYPOINT ["kstats-proxy", "serve"]
