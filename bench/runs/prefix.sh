# Sourced by each device call: the pinned diffusers/transformers/tokenizers/torchao wheels (carried as .whl/, or the
# folder WHEELS names: a call short of room carries .whl-train/, the three without torchao), the
# project on the path, and the compile caches in ignored folders that survive between calls on a warm machine.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHEELS:-.whl}/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git log -1 --format='commit %H %s' 2>/dev/null || true
