#!/bin/bash
# The CUDA checks on a GPU box with PyTorch and no TensorFlow (the Keras side is then the numpy
# reference of the Keras layers, parity/numpy_keras.py). Files: `python -m bench.cuda_files`.
# Every step is bounded; the logs go to $OUT (default: ./cuda-check).
OUT=${OUT:-cuda-check}; mkdir -p "$OUT"
export FASHION_MNIST_DIR=$PWD/.gpu/data PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
W=$(mktemp -d)
{
nvidia-smi -L
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1
{
for n in book cnn_bn_strided cnn_pool_dilated mlp_dropout_hw; do
  echo "== parity.check $n --device cuda"
  timeout 60 python3 -m parity.check .gpu/$n.keras .gpu/$n.pt --device cuda; echo "rc=$?"
done
echo "== port cnn_bn_strided.keras -> .safetensors (no TensorFlow), checked back on cuda"
timeout 60 python3 -m parity.port .gpu/cnn_bn_strided.keras "$W/bn.safetensors"; echo "rc=$?"
timeout 60 python3 -m parity.check .gpu/cnn_bn_strided.keras "$W/bn.safetensors" --device cuda; echo "rc=$?"
} > "$OUT/parity.txt" 2>&1
timeout 150 python3 -m pytest -m cuda -q -p no:cacheprovider -rA tests/test_device.py \
  tests/test_train.py tests/test_distributed.py tests/test_evaluate_predict.py > "$OUT/pytest.txt" 2>&1
echo "rc=$?" >> "$OUT/pytest.txt"
{
( time timeout 200 python3 -m torch_impl.train --device cuda --out "$W/run" ) 2>&1; echo "rc=$?"
timeout 60 python3 -m parity.port "$W/run/best-cnn-model.pt" "$W/cuda.keras"; echo "rc=$?"
timeout 60 python3 -m parity.check "$W/cuda.keras" "$W/run/best-cnn-model.pt" --device cuda; echo "rc=$?"
( time timeout 120 torchrun --standalone --nproc-per-node 1 -m torch_impl.train --device cuda \
  --epochs 2 --out "$W/ddp" ) 2>&1 | tail -6; echo "rc=$?"
} > "$OUT/train.txt" 2>&1
grep -h "rc=\|PASS\|FAIL\|test accuracy\|passed\|failed" "$OUT"/*.txt
