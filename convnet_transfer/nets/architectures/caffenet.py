"""CaffeNet as trained in the paper (Caffe's bvlc_reference_caffenet of 2014): five convolutions, three fully
connected layers; 227x227 crops of 256x256 images, batch 256, 450,000 iterations.

The eight layers with weights are the paper's layers 1..8; conv1..fc7 are transferable (split points n = 1..7),
fc8 is the classifier and is always trained anew.
"""
from . import register
from .spec import (Architecture, accuracy, constant, conv, dropout, fc, gaussian, lrn, pool, relu, softmax,
                   softmax_loss)


@register
def caffenet() -> Architecture:
    g, c0, c1 = gaussian(0.01), constant(0), constant(1)
    layers = [
        conv("conv1", "data", num_output=96, kernel_size=11, stride=4, weight_filler=g, bias_filler=c0),
        relu("relu1", "conv1"),
        pool("pool1", "conv1", kernel_size=3, stride=2),
        lrn("norm1", "pool1"),
        conv("conv2", "norm1", num_output=256, pad=2, kernel_size=5, group=2, weight_filler=g, bias_filler=c1),
        relu("relu2", "conv2"),
        pool("pool2", "conv2", kernel_size=3, stride=2),
        lrn("norm2", "pool2"),
        conv("conv3", "norm2", num_output=384, pad=1, kernel_size=3, weight_filler=g, bias_filler=c0),
        relu("relu3", "conv3"),
        conv("conv4", "conv3", num_output=384, pad=1, kernel_size=3, group=2, weight_filler=g, bias_filler=c1),
        relu("relu4", "conv4"),
        conv("conv5", "conv4", num_output=256, pad=1, kernel_size=3, group=2, weight_filler=g, bias_filler=c1),
        relu("relu5", "conv5"),
        pool("pool5", "conv5", kernel_size=3, stride=2),
        fc("fc6", "pool5", num_output=4096, weight_filler=gaussian(0.005), bias_filler=c1),
        relu("relu6", "fc6"),
        dropout("drop6", "fc6"),
        fc("fc7", "fc6", num_output=4096, weight_filler=gaussian(0.005), bias_filler=c1),
        relu("relu7", "fc7"),
        dropout("drop7", "fc7"),
        fc("fc8", "fc7", num_output=1000, weight_filler=g, bias_filler=c0),
        softmax_loss("loss", "fc8"),
        softmax("prob", "fc8"),
        accuracy("accuracy", "prob"),
    ]
    return Architecture(
        name="caffenet", net_name="CaffeNet", layers=layers,
        transferable=["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"], classifier="fc8",
        # The 2014 nets kept 1000 outputs even on the 500-class halves (labels 0..499 use the first 500).
        n_classes=1000, crop_size=227, batch_size=256, val_batch_size=50, mirror=True, image_size=(3, 256, 256),
        solver=dict(test_iter=1000, test_interval=1000, base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000,
                    display=20, max_iter=450000, momentum=0.9, weight_decay=0.0005, snapshot=10000),
        mode="gpu", file_stem="imagenet_", snapshot_prefix="caffe_imagenet_train")
