"""Caffe's layers as torch modules, with Caffe's shapes, parameters and numerics: one module per family
(as timm keeps one file per model family), each registering its classes in `LAYERS` (base.py).

    base           the registry, the Layer base class, field checks
    vision         Convolution, Deconvolution, Pooling, LRN, Crop, SPP, Im2col
    neuron         ReLU, Sigmoid, TanH, ELU, PReLU, ... (one bottom, one top of its shape)
    common         InnerProduct, Softmax and the layers that reshape, join, split or select blobs
    loss           the loss layers and Accuracy
    normalization  BatchNorm, Scale, Bias, MVN
    recurrent      RNN, LSTM
    datalayers     the data layers that compute their tops in the engine (DummyData, ...)

Data layers that read a database (Data, ImageData, ...) are fed by the Net (see net.py and engine/data.py).
"""
from .base import (CAFFE_DATA_LAYER_TYPES, FLT_MIN, LAYERS, LOSS_LAYER_TYPES, BuildContext, Elementwise, Layer,
                   check_fields, layer_where, register)
from . import vision, neuron, common, loss, normalization, recurrent, datalayers  # noqa: F401  (they register)
from .vision import CrossChannelLRN, caffe_pool_output_size

__all__ = ["LAYERS", "CAFFE_DATA_LAYER_TYPES", "LOSS_LAYER_TYPES", "FLT_MIN", "Layer", "Elementwise",
           "BuildContext", "check_fields", "layer_where", "caffe_pool_output_size", "register", "CrossChannelLRN"]
