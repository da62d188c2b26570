"""8-2: the CNN, exactly as the book builds it (a Keras Sequential)."""

from __future__ import annotations

from keras_ref.backend import keras


def build_model() -> keras.Sequential:
    """Conv2D(32) → MaxPooling2D → Conv2D(64) → MaxPooling2D → Flatten → Dense(100) → Dropout(0.4)
    → Dense(10, softmax), on (28, 28, 1) inputs. Parameters 320 / 18,496 / 313,700 / 1,010."""
    model = keras.Sequential()
    model.add(keras.layers.Input(shape=(28, 28, 1)))
    model.add(keras.layers.Conv2D(32, kernel_size=3, activation="relu", padding="same"))
    model.add(keras.layers.MaxPooling2D(2))
    model.add(keras.layers.Conv2D(64, kernel_size=3, activation="relu", padding="same"))
    model.add(keras.layers.MaxPooling2D(2))
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(100, activation="relu"))
    model.add(keras.layers.Dropout(0.4))
    model.add(keras.layers.Dense(10, activation="softmax"))
    return model
