# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 8-2 합성곱 신경망을 사용한 이미지 분류
#
# *Image classification with a convolutional neural network: chapter 8-2 of
# 혼자 공부하는 머신러닝+딥러닝 (Park Haesun), in PyTorch, section by section.*
#
# The book writes Keras; here each of its cells is done with this project's PyTorch library
# (`fashion_cnn`, `torch_impl`). The Keras reference is `keras_ref/`, and 8-3 ends with the two
# frameworks side by side.
#
# **Install** (Python 3.11), from a clone of this repository:
#
# ```sh
# git clone <this repository's URL> fashion-cnn && cd fashion-cnn
# make setup && . .venv/bin/activate   # or, in a virtual environment: pip install -e '.[dev]'
# make notebooks                       # runs 08-2 and 08-3 again, in place
# ```
#
# **Data.** The four official Fashion-MNIST files, checked (IDX header, SHA-256 of the content)
# before use: Debian/Ubuntu's package `dataset-fashion-mnist` (`apt-get install
# dataset-fashion-mnist`, found in `/usr/share/datasets/fashion-mnist/`), or
# `python -m fashion_cnn.fashion_mnist --download` once (into `~/.cache/fashion-mnist`), or a
# folder of your own in `FASHION_MNIST_DIR`. Nothing else is downloaded.
#
# **Settings**, read from the environment: `BOOK_QUICK=1` trains 1 epoch on 2,000 images (what
# the tests run) instead of the book's 20 epochs with early stopping; `BOOK_RUNS=DIR` is where
# the checkpoints go (default: `runs/` beside this notebook, ignored by git). 8-3 reads the
# checkpoint this notebook writes.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from fashion_cnn.fashion_mnist import CLASS_NAMES, CLASS_NAMES_KO, book_split, load_data
from torch_impl.checkpoint import load_model
from torch_impl.data import load_book_data
from torch_impl.evaluate import evaluate
from torch_impl.model import BookCNN, summary
from torch_impl.train import TrainConfig, train
from torch_impl.visualize import class_names, plot_prediction

QUICK = os.environ.get("BOOK_QUICK") == "1"
RUNS = Path(os.environ.get("BOOK_RUNS", "runs"))
RUN_DIR = RUNS / "08-2"  # best-cnn-model.pt, last.pt, history.json, history.png
plt.rcParams.update({"figure.dpi": 70, "figure.figsize": (5, 3.5)})  # small pictures
print(f"{'quick: 1 epoch on 2,000 images' if QUICK else 'the book: up to 20 epochs'} → {RUN_DIR}")

# %% [markdown]
# ## 패션 MNIST 데이터 불러오기
#
# *Loading the Fashion-MNIST data.* The book calls `keras.datasets.fashion_mnist.load_data()`;
# `load_data()` here returns the same uint8 arrays from the verified files. The images get a
# channel axis and are scaled to [0, 1], then 20% of them become the validation set
# (`train_test_split(..., test_size=0.2, random_state=42)`, the book's split).

# %%
(train_input, train_target), (test_input, test_target) = load_data()

# The book's reshape(-1, 28, 28, 1) / 255.0 and train_test_split(test_size=0.2, random_state=42)
train_scaled, val_scaled, train_target, val_target = book_split(train_input, train_target)
print(train_input.shape, "→", train_scaled.shape, val_scaled.shape)

# %% [markdown]
# *PyTorch puts the channel first (N, 1, 28, 28), and wants float32 tensors: `load_book_data()`
# is the same split as tensors.*

# %%
data = load_book_data()
print("train", tuple(data.train_x.shape), "val", tuple(data.val_x.shape),
      "test", tuple(data.test_x.shape), data.train_x.dtype)
assert np.array_equal(data.val_x.numpy()[:, 0], val_scaled[..., 0].astype(np.float32))

# %% [markdown]
# ## 합성곱 신경망 만들기
#
# *Building the CNN.* `BookCNN` is the book's Sequential model as a `torch.nn.Module`
# (`torch_impl/model.py`). `init="keras"` starts it the way Keras does: Glorot-uniform kernels,
# zero biases. Below, one image goes through it layer by layer, to see the shapes the book
# describes.

# %%
model = BookCNN(init="keras")
x = data.train_x[:1]  # one image, (1, 1, 28, 28)
x.shape

# %% [markdown]
# ### 첫번째 합성곱 추가
#
# *The first convolution: 32 filters of 3×3, ReLU, "same" padding (`padding=1`), so the map
# stays 28×28 and gets 32 channels.*

# %%
h = model.relu1(model.conv1(x))
model.conv1, h.shape

# %% [markdown]
# ### 풀링층 추가
#
# *A 2×2 max-pooling layer halves the map: (32, 14, 14).*

# %%
h = model.pool1(h)
model.pool1, h.shape

# %% [markdown]
# ### 두번째 합성곱-풀링층 추가
#
# *The second convolution has 64 filters, again ReLU and "same" padding, then pooling: (64, 7, 7).*

# %%
h = model.pool2(model.relu2(model.conv2(h)))
model.conv2, h.shape

# %% [markdown]
# ### 3차원 특성맵 펼치기
#
# *Flatten the 3-D feature map (64 × 7 × 7 = 3,136 values), a hidden Dense layer of 100 with
# ReLU, dropout 0.4 against overfitting, and 10 outputs. PyTorch's last layer gives logits; the
# softmax is in the loss and in `predict_proba`.*

# %%
h = model.flatten(h)
print("flatten", tuple(h.shape))
logits = model.dense2(model.dropout(model.relu3(model.dense1(h))))
print("dense2 (logits)", tuple(logits.shape))

# %% [markdown]
# ### 최종 모델
#
# *The whole model: 333,526 parameters, as in the book's `model.summary()`.*

# %%
print(summary(model))

# %% [markdown]
# ### 모델 컴파일과 훈련
#
# *Compiling and training, the book's recipe: Adam (with Keras's update rule), cross-entropy,
# batch 32, up to 20 epochs; the best model on validation loss is saved to
# `best-cnn-model.pt` (ModelCheckpoint), and training stops when the validation loss has not
# improved for 2 epochs, keeping the best weights (EarlyStopping). `train()` is the library
# function behind `python -m torch_impl.train`.*

# %%
config = TrainConfig(epochs=1 if QUICK else 20, limit=2000 if QUICK else 0, out=RUN_DIR, seed=42)
result = train(config, data=data)
history = result["history"]

# %% [markdown]
# ### 성능 시각화
#
# *The loss curves of training and validation; the best epoch is the one whose weights were
# kept.*

# %%
epochs = range(1, len(history["loss"]) + 1)
plt.plot(epochs, history["loss"], marker="o")
plt.plot(epochs, history["val_loss"], marker="o")
plt.xlabel("epoch")
plt.ylabel("loss")
plt.xticks(epochs)
plt.legend(["train", "val"])
plt.show()

# %% [markdown]
# *The best model, read back from its checkpoint, on the validation set (the book's
# `model.evaluate(val_scaled, val_target)`).*

# %%
model = load_model(RUN_DIR / "best-cnn-model.pt")
val = evaluate(model, data.val_x, data.val_y)
print(f"validation: accuracy {val.accuracy:.4f}, loss {val.loss:.4f}")

# %% [markdown]
# ### 예측
#
# *Prediction for the first validation image: the probability of each of the 10 classes, and
# the most likely one, with the book's Korean class names. (The book's model says 가방, a bag,
# with probability ≈ 1.)*

# %%
preds = model.predict_proba(data.val_x[0:1]).numpy()
with np.printoptions(precision=4, suppress=True):
    print(preds)

# %%
names, font = class_names("ko")  # the book's Korean names where a Hangul font is installed
pred = int(np.argmax(preds))
png = plot_prediction(val_scaled[0, :, :, 0], preds[0], names,
                      f"val_scaled[0]: {names[pred]} (p={preds[0, pred]:.3f})", font,
                      RUN_DIR / "prediction.png")
display(Image(filename=png))
print(f"val_scaled[0]: predicted {CLASS_NAMES_KO[pred]} ({CLASS_NAMES[pred]}), "
      f"p={preds[0, pred]:.4f}; label {CLASS_NAMES_KO[val_target[0]]}")

# %% [markdown]
# *Last, the test set kept aside from the start: how well the CNN generalises.*

# %%
test = evaluate(model, data.test_x, data.test_y)
print(f"test: accuracy {test.accuracy:.4f} ({test.correct:,}/{test.total:,}), loss {test.loss:.4f}")
