# syntax=docker/dockerfile:1
# First working image (the deployment issue refines it: CUDA variant, healthcheck on the daemon's HTTP port).
# CPU build by default: torch comes from the PyTorch CPU index so that no CUDA wheel is pulled.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"
COPY pyproject.toml README.md /src/
COPY detector /src/detector
RUN pip install /src

FROM python:${PYTHON_VERSION}-slim
RUN useradd --create-home --uid 10001 detector && mkdir /models && chown detector /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER detector
WORKDIR /home/detector
VOLUME ["/models"]
ENTRYPOINT ["detector"]
CMD ["--help"]
