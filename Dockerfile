# Krea 2 Studio for a CUDA GPU host:
#   docker build -t krea2-studio .
#   docker run --gpus all -p 7860:7860 -v krea2-data:/data -e HF_TOKEN=hf_... krea2-studio
# torch==2.13.0 from PyPI is the CUDA build on Linux x86_64 and bundles the CUDA runtime, so a slim Python base
# plus the NVIDIA container toolkit on the host is all it needs.
FROM python:3.11-slim

# Reachable from other machines, so the content filter is on and required (studio/safety.py); it downloads its
# classifier (KREA2_FILTER_MODEL) into the volume's Hub cache at the first start.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KREA2_HOST=0.0.0.0 \
    KREA2_CONTENT_FILTER=on \
    KREA2_PORT=7860 \
    KREA2_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

WORKDIR /app
COPY requirements.txt requirements-gpu.txt ./
RUN pip install -r requirements-gpu.txt

COPY app.py NOTICE KREA-2-COMMUNITY-LICENSE ./
COPY krea2 ./krea2
COPY storage ./storage
COPY studio ./studio
COPY ui ./ui
COPY demo/checkpoints ./demo/checkpoints

RUN useradd --create-home --uid 1000 studio && mkdir -p /data && chown studio /data
USER studio
VOLUME /data
EXPOSE 7860
CMD ["python", "app.py"]
