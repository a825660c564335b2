"""A small residual net of our own for 28x28 greyscale images (Fashion-MNIST): the example of transfer on a net
with BatchNorm + Scale blocks and residual Eltwise joins, kept as a user's own train_val prototxt
(resnet_small.prototxt beside this file, Kaiming He's layer names) and read with `from_prototxt`.

conv1 3x3/16 + BatchNorm + Scale + ReLU; residual blocks res2a (16, identity shortcut), res3a (32, stride 2,
projection shortcut), res4a (64, stride 2, projection), res4b (64, identity); global average pooling; fc10.
Its five transferable units are the stem and the four blocks (split points n = 1..5); fc10 is the classifier.
"""
from pathlib import Path

from . import register
from .spec import Architecture, from_prototxt

PROTOTXT = Path(__file__).with_name("resnet_small.prototxt")
UNITS = ["conv1", "res2a", "res3a", "res4a", "res4b"]


@register
def resnet_small() -> Architecture:
    return from_prototxt(
        PROTOTXT, UNITS, name="resnet_small", image_size=(1, 28, 28), mode="cpu",
        solver=dict(test_iter=100, test_interval=500, base_lr=0.05, lr_policy="step", gamma=0.1, stepsize=3000,
                    display=100, max_iter=4000, momentum=0.9, weight_decay=0.0001, snapshot=1000))
