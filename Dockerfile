# The store image: one etcdstore member; flags and ETCD_* variables are etcd's.
#
#   docker build -t etcdstore:0.1.0 .
#   docker run -p 2379:2379 etcdstore:0.1.0 --listen-client-urls http://0.0.0.0:2379 \
#       --advertise-client-urls http://127.0.0.1:2379
#
# BASE_IMAGE: any Debian 12 image with python3 (3.11) and python3-venv, e.g. the public
# python:3.11-slim, or a local base made without a registry (see Dockerfile.operator):
#   podman --storage-driver vfs build --build-arg BASE_IMAGE=localhost/debian-python:3.11 \
#       --build-arg PYTHON=/usr/bin/python3 -t etcdstore:0.1.0 .
# Offline builds: put wheels in ./wheels (pip download -d wheels .) and pass
# --build-arg PIP_ARGS="--no-index --find-links=/src/wheels".
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PYTHON=python3
ARG PIP_ARGS=""
WORKDIR /src
COPY . /src
RUN ${PYTHON} -m venv /opt/etcdstore \
 && /opt/etcdstore/bin/pip install --no-cache-dir ${PIP_ARGS} /src \
 && /opt/etcdstore/bin/etcdstore --version

FROM ${BASE_IMAGE}
RUN groupadd --gid 65532 etcd \
 && useradd --uid 65532 --gid 65532 --home-dir /var/lib/etcd --create-home --shell /usr/sbin/nologin etcd
COPY --from=build /opt/etcdstore /opt/etcdstore
ENV PATH=/opt/etcdstore/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ETCD_DATA_DIR=/var/lib/etcd/default.etcd
USER 65532:65532
WORKDIR /var/lib/etcd
VOLUME /var/lib/etcd
EXPOSE 2379 2380
ENTRYPOINT ["etcdstore"]
