# flagscope as a container: `docker build -t flagscope .` then
#   docker run -p 4317:4317 -p 4318:4318 -v flagscope-data:/var/lib/flagscope flagscope
# The same image runs the reports: `docker run … flagscope schedule --config /etc/flagscope/flagscope.toml`.
FROM python:3.11-slim

# No .pyc files in the image layers; logs reach `docker logs` at once.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY collector ./collector
COPY analysis ./analysis
RUN pip install --no-cache-dir . && rm -rf /src

# An unprivileged user owns the data: the WAL and the lake.
RUN useradd --system --uid 10001 --home-dir /var/lib/flagscope --create-home flagscope
USER flagscope
WORKDIR /var/lib/flagscope
VOLUME ["/var/lib/flagscope"]

# Listen on every interface inside the container; the data dir is the volume.
ENV FLAGSCOPE_HTTP_ENDPOINT=0.0.0.0:4318 \
    FLAGSCOPE_GRPC_ENDPOINT=0.0.0.0:4317 \
    FLAGSCOPE_DATA_DIR=/var/lib/flagscope
EXPOSE 4317 4318

# Ready: the collector takes data (WAL writable, lake writers up); see README, "Probes".
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:4318/readyz', timeout=2)"]

ENTRYPOINT ["flagscope"]
CMD ["serve"]
