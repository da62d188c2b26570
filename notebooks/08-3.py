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
# # 8-3 합성곱 신경망의 시각화
#
# *Visualising the CNN: chapter 8-3 of 혼자 공부하는 머신러닝+딥러닝 (Park Haesun), in PyTorch,
# section by section: the weights the CNN learned, and the feature maps it makes of an image.*
# The last section puts Keras's feature maps beside PyTorch's.
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
# **Settings**, read from the environment: `BOOK_RUNS=DIR` is where 08-2 wrote its checkpoint
# (default: `runs/` beside this notebook) and where this notebook writes its pictures and
# checkpoints; `BOOK_QUICK=1` makes the Keras model of the last section train on 2,000 images
# instead of 48,000; `BOOK_KERAS=FILE.keras` compares a Keras checkpoint of your own instead
# (for example `runs/keras/best-cnn-model.keras` from `make train-keras`). Run 08-2 first.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Image, display
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from fashion_cnn.fashion_mnist import CLASS_NAMES_KO, book_split, load_data
from torch_impl.checkpoint import load_model
from torch_impl.visualize import (
    book_image,
    conv1_stats,
    feature_maps,
    plot_feature_maps,
    plot_histograms,
    plot_kernels,
    untrained_models,
)

QUICK = os.environ.get("BOOK_QUICK") == "1"
RUNS = Path(os.environ.get("BOOK_RUNS", "runs"))
CKPT = RUNS / "08-2" / "best-cnn-model.pt"  # written by 08-2
FIG_DIR = RUNS / "08-3"  # this notebook's pictures and checkpoints
FIG_DIR.mkdir(parents=True, exist_ok=True)
plt.rcParams.update({"figure.dpi": 70, "figure.figsize": (5, 3.5)})  # small pictures
if not CKPT.is_file():
    raise FileNotFoundError(f"{CKPT}: run the 08-2 notebook first (it trains and writes it)")

# %% [markdown]
# ## 가중치 시각화
#
# *Looking at the weights.* The best checkpoint of 8-2 (the book:
# `keras.models.load_model('best-cnn-model.keras')`); its layers, in order.

# %%
model = load_model(CKPT)
model

# %% [markdown]
# *The first convolution's weight and bias. PyTorch keeps a kernel as (out, in, height, width)
# = (32, 1, 3, 3), where Keras has (3, 3, 1, 32); one bias per filter: (32,).*

# %%
conv = model.conv1
print(conv.weight.shape, conv.bias.shape)
print("in the book's Keras layout:", conv1_stats(model).keras_shape)

# %% [markdown]
# *The mean and standard deviation of the 288 weights.*

# %%
conv_weights = conv.weight.detach().numpy()
print(conv_weights.mean(), conv_weights.std())

# %% [markdown]
# *Their histogram: a bell shape around 0.*

# %%
plt.hist(conv_weights.reshape(-1, 1))
plt.xlabel("weight")
plt.ylabel("count")
plt.show()

# %% [markdown]
# *The 32 kernels of 3×3 in a 2×16 grid, on one colour scale (vmin −0.5, vmax 0.5): bright
# weights are large, dark ones small or negative. Each kernel looks for a pattern.*

# %%
fig, axs = plt.subplots(2, 16, figsize=(12, 1.8))
for i in range(2):
    for j in range(16):
        axs[i, j].imshow(conv_weights[i * 16 + j, 0], vmin=-0.5, vmax=0.5)  # Keras: [:, :, 0, k]
        axs[i, j].axis("off")
plt.show()

# %% [markdown]
# ### 빈 합성곱 신경망과의 가중치 비교
#
# *Compared with an untrained network. The book's untrained Conv2D starts from Keras's
# Glorot-uniform initialisation: a uniform distribution, mean near 0 and a small spread
# (std ≈ 0.08); training spreads the weights wider. PyTorch's own default initialisation
# (kaiming_uniform, for comparison) already starts wider.*

# %%
untrained = untrained_models(seed=42)  # Keras's Glorot uniform, and PyTorch's default
stats = [conv1_stats(model)] + [conv1_stats(m, label) for label, m in untrained.items()]
for s in stats:
    print(f"{s.label}: mean {s.mean:.4f}, std {s.std:.4f}")
display(Image(filename=plot_histograms(stats, FIG_DIR / "conv1-hist.png")))

# %%
display(Image(filename=plot_kernels(stats, FIG_DIR / "conv1-kernels.png")))

# %% [markdown]
# ## 함수형 API
#
# *The functional API.* To see a layer's output, the book builds a second Keras model with the
# functional API, `keras.Model(model.inputs, model.layers[0].output)`. In PyTorch,
# torchvision's `create_feature_extractor` does the same from the module: it traces the model
# into a graph of named nodes and returns the ones asked for. Keras's Conv2D applies its ReLU
# inside the layer, so the book's conv1 output is PyTorch's `relu1` node.

# %%
print(get_graph_node_names(model)[1])
conv_acti = create_feature_extractor(model, return_nodes={"relu1": "conv1"})
conv_acti

# %% [markdown]
# ## 특성맵 시각화
#
# *Feature maps.* The first training image, an ankle boot (앵클 부츠), scaled as in 8-2:
# `train_input[0:1].reshape(-1, 28, 28, 1) / 255.0`, here (1, 1, 28, 28).

# %%
(train_input, train_target), _ = load_data()
plt.imshow(train_input[0], cmap="gray_r")
plt.axis("off")
plt.show()
print(f"train_input[0]: {CLASS_NAMES_KO[train_target[0]]}")

# %%
image = book_image(train_input, 0)  # (1, 1, 28, 28) float32
print(conv_acti(image)["conv1"].shape)

# %% [markdown]
# *conv1's 32 feature maps (28×28) in a 4×8 grid: each filter lights up where the image holds
# its pattern (edges, flat regions, the boot's outline).*

# %%
maps = feature_maps(model, image)  # {"conv1": (32, 28, 28), "conv2": (64, 14, 14)}
title = "PyTorch: conv1 feature maps (32, 28, 28) of train_input[0]"
display(Image(filename=plot_feature_maps("conv1", maps["conv1"], title, FIG_DIR / "conv1.png")))

# %% [markdown]
# *conv2's 64 feature maps (14×14) in an 8×8 grid: more abstract, harder to read by eye.*

# %%
title = "PyTorch: conv2 feature maps (64, 14, 14) of train_input[0]"
display(Image(filename=plot_feature_maps("conv2", maps["conv2"], title, FIG_DIR / "conv2.png")))

# %% [markdown]
# ## Keras와 비교
#
# *Comparing with Keras.* The same weights in both frameworks must give the same feature maps.
# The Keras checkpoint: `BOOK_KERAS` if set; otherwise the book's Keras model
# (`keras_ref.model.build_model()`) trained here briefly, one epoch on 2,000 (`BOOK_QUICK=1`) or
# 48,000 training images, and saved by Keras itself. `parity.port` converts it to a PyTorch
# checkpoint, after checking both models agree on 1,000 real test images. Then Keras computes
# its feature maps with the book's functional API and PyTorch with the ported model.
# (`python -m parity.visualize KERAS_FILE TORCH_FILE --out DIR` draws the same from the command
# line.) This is the only section that imports Keras (after torch: torch's compiler stack must be
# loaded before TensorFlow in one process).

# %%
import keras

from keras_ref.model import build_model
from parity.port import port
from parity.visualize import MAPS_TOLERANCE, SideBySide, max_abs_diff_per_map, plot_side_by_side

keras_file = Path(os.environ.get("BOOK_KERAS") or FIG_DIR / "keras-cnn-model.keras")
if "BOOK_KERAS" not in os.environ:
    train_scaled, _, train_target_split, _ = book_split(train_input, train_target)
    n = 2000 if QUICK else len(train_scaled)
    keras.utils.set_random_seed(42)
    keras_model = build_model()
    keras_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"])
    fit = keras_model.fit(train_scaled[:n], train_target_split[:n], epochs=1, verbose=0)
    keras_model.save(keras_file)
    print(f"Keras: 1 epoch on {n:,} images, loss {fit.history['loss'][-1]:.4f} → {keras_file}")

# %%
ported = FIG_DIR / "keras-cnn-model.pt"
source, agreement = port(keras_file, ported, force=True)
worst = max(agreement.layers, key=lambda d: d.max_abs)
print(f"{keras_file.name} → {ported.name}: every layer on {agreement.samples:,} test images "
      f"within tolerance (worst {worst.name}: {worst.max_abs:.1e}), "
      f"{agreement.agreeing:,}/{agreement.samples:,} predictions agree")

# %%
keras_model = keras.models.load_model(keras_file)
inputs = train_input[0:1].reshape(-1, 28, 28, 1) / 255.0
conv_acti = keras.Model(keras_model.inputs, keras_model.layers[0].output)
conv2_acti = keras.Model(keras_model.inputs, keras_model.layers[2].output)
keras_maps = {  # Keras's (1, H, W, C) → (C, H, W), PyTorch's layout
    "conv1": conv_acti.predict(inputs, verbose=0)[0].transpose(2, 0, 1),
    "conv2": conv2_acti.predict(inputs, verbose=0)[0].transpose(2, 0, 1),
}
torch_maps = feature_maps(load_model(ported), image)

# %% [markdown]
# *Keras's maps, PyTorch's maps, and each map's largest difference, for conv1 and conv2.*

# %%
for name in ("conv1", "conv2"):
    diffs = max_abs_diff_per_map(keras_maps[name], torch_maps[name])  # (C,)
    print(f"Keras vs PyTorch {name} feature maps: max |diff| {diffs.max():.2e} over "
          f"{len(diffs)} maps (tolerance {MAPS_TOLERANCE:g})")
    side = SideBySide(name, keras_maps[name], torch_maps[name], diffs)
    title = f"{name}: Keras | PyTorch | max |diff| {diffs.max():.1e}"
    path = plot_side_by_side(side, title, FIG_DIR / f"keras-vs-torch-{name}.png")
    display(Image(filename=path))
    assert diffs.max() <= MAPS_TOLERANCE, f"{name}: Keras and PyTorch differ"
