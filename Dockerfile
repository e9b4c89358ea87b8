# syntax=docker/dockerfile:1
#
# detector: the scoring daemon and its tools in one image.
#
#   docker build -t detector:0.1.0 .                                      # CPU (default)
#   docker build -t detector:0.1.0-cuda --build-arg TORCH_VARIANT=cu128 .  # CUDA 12.8 wheels
#   docker run --rm -p 9108:9108 -v "$PWD/models:/models:ro" \
#       -e DETECTOR_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 detector:0.1.0     # `detector serve`
#
# The default command, `serve --config /etc/detector/config.yaml`, reads the image's settings file (written
# below: the checkpoint in the mounted /models, JSON logs; the settings defaults otherwise, e.g. HTTP on
# 0.0.0.0:9108). Mount your own file there (a Kubernetes ConfigMap) or pass DETECTOR_* variables, which win
# over it. The image sets no DETECTOR_* variable itself: one would win over any config file, so editing that
# setting in the file would silently do nothing.
# Replacing the checkpoint file (write elsewhere, then rename over it) rolls a new model out without a restart.
#
# CPU builds never pull a CUDA wheel: torch is installed first from the PyTorch index of TORCH_VARIANT
# alone (--index-url, not --extra-index-url, so PyPI's CUDA build of torch is never a candidate), then the
# project is installed under a constraint that pins torch to that same version, so the resolver keeps the
# installed `+cpu` build instead of fetching another one. The CUDA wheels bundle the CUDA runtime, so the
# same slim base serves both; a GPU host needs only the NVIDIA driver and container toolkit.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# cpu, or a CUDA variant published on the PyTorch index for TORCH_VERSION (cu126, cu128, ...)
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /tmp/torch-constraint.txt
COPY pyproject.toml README.md /src/
COPY detector /src/detector
# Not editable, so /src is not needed at run time. C++ headers are only for building torch extensions.
RUN pip install --constraint /tmp/torch-constraint.txt /src \
    && python -c "import torch, detector; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && rm -rf /opt/venv/lib/python*/site-packages/torch/include

FROM python:${PYTHON_VERSION}-slim
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="detector" \
      org.opencontainers.image.description="Streaming anomaly detection on Kafka: LSTM scoring, calibrated flags, hot-swapped checkpoints" \
      io.detector.torch-variant="${TORCH_VARIANT}"
# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it and volume owners can match it.
# /models is owned by it: a fresh named volume mounted there takes that owner (compose's model-init writes).
# /etc/detector/config.yaml is the image's settings file (see the top): only what differs from the defaults.
RUN groupadd --gid 10001 detector \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin detector \
    && mkdir /models \
    && chown 10001:10001 /models \
    && mkdir /etc/detector \
    && printf '%s\n' \
        'model:' \
        '  checkpoint: /models/detector.ckpt' \
        'log:' \
        '  format: json' \
        > /etc/detector/config.yaml
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/detector
# /metrics, /healthz, /readyz
EXPOSE 9108
# Liveness of the serving loop, with the interpreter already in the image (no curl in a slim image). It
# follows DETECTOR_HTTP__PORT when that is set (an http.port in a config file it cannot see: move the port
# with the variable). One-shot commands (replay, train) disable it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DETECTOR_HTTP__PORT', '9108') + '/healthz', timeout=4)"]
ENTRYPOINT ["detector"]
CMD ["serve", "--config", "/etc/detector/config.yaml"]
