# taskomatic worker image.
#
#   docker build -t taskomatic:local .
#   docker run --rm taskomatic:local taskomatic --help
#
# Two stages: libvirt-python is published as an sdist only, so it is compiled against the
# libvirt headers in the build stage; the runtime stage gets the resulting virtualenv plus the
# libvirt client libraries, without a compiler.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

# gcc + libc6-dev + pkg-config + libvirt-dev: what libvirt-python's build needs (the python
# image already carries the Python headers). libc6-dev is only a *recommendation* of gcc,
# hence listed explicitly under --no-install-recommends.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config libvirt-dev \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/taskomatic
ENV PATH=/opt/taskomatic/bin:$PATH

WORKDIR /src
# The build context is filtered by .dockerignore (no tests, no venvs, no deploy/ secrets).
COPY . .
RUN pip install --upgrade pip \
 && pip install . \
 && python -c "import libvirt, psycopg2, temporalio; print('libvirt', libvirt.getVersion())"

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# libvirt0: the library libvirt-python links against (gnutls for qemu+tls:// comes with it).
# libvirt-clients: virsh / virt-pki-validate, to debug connectivity from inside the container.
# openssh-client: libvirt's qemu+ssh:// transport runs the `ssh` binary.
# tini: PID 1 that forwards SIGTERM, so `docker stop` reaches the worker's graceful shutdown.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates libvirt0 libvirt-clients openssh-client tini \
 && rm -rf /var/lib/apt/lists/*

# Fixed, non-root identity: 10001 is what deploy/README.md tells operators to give the
# mounted TLS key / SSH key to. A home directory is required by ssh (~/.ssh).
RUN groupadd --system --gid 10001 taskomatic \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/taskomatic --create-home \
      --shell /usr/sbin/nologin taskomatic

COPY --from=build /opt/taskomatic /opt/taskomatic

ENV PATH=/opt/taskomatic/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TASKOMATIC_LOG_FORMAT=json

USER 10001:10001
WORKDIR /home/taskomatic

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["taskomatic", "worker"]
