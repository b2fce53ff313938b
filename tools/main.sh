#!/usr/bin/env bash
# The main job: install dependencies, build in Release, and evaluate the shipped ResNet-20 teacher on
# the Fashion-MNIST test set. (Later: the zero-shot quantization demo.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
./build/zsq eval models/pretrained/resnet20.safetensors
