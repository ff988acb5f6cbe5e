# The store image: one etcdstore member; flags and ETCD_* variables are etcd's.
#
#   docker build -t etcdstore:0.1.0 .
#   docker run -p 2379:2379 etcdstore:0.1.0 --listen-client-urls http://0.0.0.0:2379 \
#       --advertise-client-urls http://127.0.0.1:2379
#
# BASE_IMAGE: a Debian 12 (bookworm) image with python3 (3.11) and python3-venv: by default the public
# python:3.11-slim-bookworm (pinned to bookworm: the bare 3.11-slim tag moved to Debian 13), or a local base
# made without a registry (see Dockerfile.operator):
#   podman --storage-driver vfs build --build-arg BASE_IMAGE=localhost/debian-python:3.11 \
#       --build-arg PYTHON=/usr/bin/python3 -t etcdstore:0.1.0 .
# Offline builds: put wheels in ./wheels (pip download -d wheels .) and pass
# --build-arg PIP_ARGS="--no-index --find-links=/src/wheels".
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PYTHON=python3
ARG PIP_ARGS=""
WORKDIR /src
COPY . /src
RUN ${PYTHON} -m venv /opt/etcdstore \
 && /opt/etcdstore/bin/pip install --no-cache-dir ${PIP_ARGS} /src \
 && /opt/etcdstore/bin/etcdstore --version \
 && /opt/etcdstore/bin/python -m pip uninstall -y -q pip setuptools wheel

FROM ${BASE_IMAGE}
ARG PYTHON=python3
# No package installer in the final image (the base's own pip, if any, goes too).
RUN (${PYTHON} -m pip uninstall -y -q pip setuptools wheel 2>/dev/null || true) \
 && groupadd --gid 65532 etcd \
 && useradd --uid 65532 --gid 65532 --home-dir /var/lib/etcd --create-home --shell /usr/sbin/nologin etcd
COPY --from=build /opt/etcdstore /opt/etcdstore
ENV PATH=/opt/etcdstore/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ETCD_DATA_DIR=/var/lib/etcd/default.etcd
USER 65532:65532
WORKDIR /var/lib/etcd
VOLUME /var/lib/etcd
EXPOSE 2379 2380
# Health: GET /health on the client URL (as etcd; the operator's pods probe it). No HEALTHCHECK here, since
# the client URL is whatever --listen-client-urls says; with the defaults above:
#   docker run --health-cmd 'python3 -c "import urllib.request as u; u.urlopen(\"http://127.0.0.1:2379/health\")"' ...
ENTRYPOINT ["etcdstore"]
