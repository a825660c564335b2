"""CaffeNet's eight layers in the same roles, sized for small images (Fashion-MNIST 28x28 greyscale, CIFAR-style
32x32 colour) so that a CPU trains it at a few hundred images per second.

conv1 5x5/32 - pool - LRN - conv2 5x5/64 (2 groups) - pool - LRN - conv3 3x3/96 - conv4 3x3/96 (2 groups) -
conv5 3x3/64 (2 groups) - pool - fc6 256 - dropout - fc7 256 - dropout - fc8 K. Crops of 28 (the whole image for
28x28, a random crop of 32x32); the spatial size goes 28 -> 14 -> 7 -> 3. Layers 1..7 transfer as in the paper.
"""
from . import register
from .spec import (Architecture, accuracy, constant, conv, dropout, fc, lrn, pool, relu, softmax, softmax_loss,
                   xavier)


@register
def caffenet_small() -> Architecture:
    x, c0 = xavier(), constant(0)
    layers = [
        conv("conv1", "data", num_output=32, pad=2, kernel_size=5, weight_filler=x, bias_filler=c0),
        relu("relu1", "conv1"),
        pool("pool1", "conv1", kernel_size=3, stride=2),
        lrn("norm1", "pool1", local_size=3),
        conv("conv2", "norm1", num_output=64, pad=2, kernel_size=5, group=2, weight_filler=x, bias_filler=c0),
        relu("relu2", "conv2"),
        pool("pool2", "conv2", kernel_size=3, stride=2),
        lrn("norm2", "pool2", local_size=3),
        conv("conv3", "norm2", num_output=96, pad=1, kernel_size=3, weight_filler=x, bias_filler=c0),
        relu("relu3", "conv3"),
        conv("conv4", "conv3", num_output=96, pad=1, kernel_size=3, group=2, weight_filler=x, bias_filler=c0),
        relu("relu4", "conv4"),
        conv("conv5", "conv4", num_output=64, pad=1, kernel_size=3, group=2, weight_filler=x, bias_filler=c0),
        relu("relu5", "conv5"),
        pool("pool5", "conv5", kernel_size=3, stride=2),
        fc("fc6", "pool5", num_output=256, weight_filler=x, bias_filler=c0),
        relu("relu6", "fc6"),
        dropout("drop6", "fc6"),
        fc("fc7", "fc6", num_output=256, weight_filler=x, bias_filler=c0),
        relu("relu7", "fc7"),
        dropout("drop7", "fc7"),
        fc("fc8", "fc7", num_output=10, weight_filler=x, bias_filler=c0),
        softmax_loss("loss", "fc8"),
        softmax("prob", "fc8"),
        accuracy("accuracy", "prob"),
    ]
    return Architecture(
        name="caffenet_small", net_name="CaffeNetSmall", layers=layers,
        transferable=["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"], classifier="fc8",
        n_classes=10, crop_size=28, batch_size=64, val_batch_size=100, mirror=True, image_size=(1, 28, 28),
        scale=0.00390625,
        solver=dict(test_iter=100, test_interval=500, base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=3000,
                    display=100, max_iter=4000, momentum=0.9, weight_decay=0.0005, snapshot=1000),
        mode="cpu", file_stem="", snapshot_prefix="snapshot")
