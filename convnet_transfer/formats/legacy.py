"""Caffe's legacy net formats as tables: the 2014 "V0" layer (`layers { layer { type: "conv" kernelsize: 11 } }`)
and the V1 layer type enum (`layers { type: CONVOLUTION }`), as src/caffe/util/upgrade_proto.cpp upgrades them.

The engine's upgrade (training/engine/upgrade.py) reads V0 files through V0_TYPES and V0_FIELDS; the 2014
templates write them through their inverse, `v0_writing_tables()`, handed to the template as data.
"""
from __future__ import annotations

__all__ = ["V0_TYPES", "V0_FIELDS", "V0_ANY_TYPE", "V0_PADDING_TYPE", "V1_TYPE_NAMES", "v0_writing_tables"]

# V0 type string -> V1 enum name (UpgradeV0LayerType)
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# The V0 layer that only pads its bottom: UpgradeV0PaddingLayers folds its `pad` into the conv/pool layer reading it.
V0_PADDING_TYPE = "padding"

# V0 field -> {V0 layer type (or V0_ANY_TYPE for any): "param_message.field"} (UpgradeV0LayerParameter).
# A V0 field set on a layer type not listed is an error (Caffe logs it and drops the value).
V0_ANY_TYPE = "*"
V0_FIELDS = {
    "num_output": {"conv": "convolution_param.num_output", "innerproduct": "inner_product_param.num_output"},
    "biasterm": {"conv": "convolution_param.bias_term", "innerproduct": "inner_product_param.bias_term"},
    "weight_filler": {"conv": "convolution_param.weight_filler", "innerproduct": "inner_product_param.weight_filler"},
    "bias_filler": {"conv": "convolution_param.bias_filler", "innerproduct": "inner_product_param.bias_filler"},
    "pad": {"conv": "convolution_param.pad", "pool": "pooling_param.pad"},
    "kernelsize": {"conv": "convolution_param.kernel_size", "pool": "pooling_param.kernel_size"},
    "group": {"conv": "convolution_param.group"},
    "stride": {"conv": "convolution_param.stride", "pool": "pooling_param.stride"},
    "pool": {"pool": "pooling_param.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"},
    "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"},
    "k": {"lrn": "lrn_param.k"},
    "source": {"data": "data_param.source", "images": "image_data_param.source",
               "window_data": "window_data_param.source"},
    "scale": {V0_ANY_TYPE: "transform_param.scale"},
    "meanfile": {V0_ANY_TYPE: "transform_param.mean_file"},
    "batchsize": {"data": "data_param.batch_size", "images": "image_data_param.batch_size",
                  "window_data": "window_data_param.batch_size"},
    "cropsize": {V0_ANY_TYPE: "transform_param.crop_size"},
    "mirror": {V0_ANY_TYPE: "transform_param.mirror"},
    "rand_skip": {"data": "data_param.rand_skip", "images": "image_data_param.rand_skip"},
    "shuffle_images": {"images": "image_data_param.shuffle"},
    "new_height": {"images": "image_data_param.new_height"},
    "new_width": {"images": "image_data_param.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": "window_data_param.fg_threshold"},
    "det_bg_threshold": {"window_data": "window_data_param.bg_threshold"},
    "det_fg_fraction": {"window_data": "window_data_param.fg_fraction"},
    "det_context_pad": {"window_data": "window_data_param.context_pad"},
    "det_crop_mode": {"window_data": "window_data_param.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}

# V1 enum name -> current type string (UpgradeV1LayerType)
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
    "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power",
    "RELU": "ReLU", "SIGMOID": "Sigmoid", "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence", "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}


def v0_writing_tables() -> dict:
    """The inverse of the V0 tables, for writing a net in the V0 format (templates/2014/net.prototxt.j2):
    `types`: current type -> V0 type; `fields`: V0 type -> {param group -> {field -> V0 field}};
    `padding`: the padding layer's type."""
    types = {V1_TYPE_NAMES[v1]: v0 for v0, v1 in V0_TYPES.items()}
    fields: dict[str, dict[str, dict[str, str]]] = {v0: {} for v0 in V0_TYPES}
    for v0_field, targets in V0_FIELDS.items():
        for v0_type, path in targets.items():
            group, _, field = path.partition(".")
            for layer_type in (V0_TYPES if v0_type == V0_ANY_TYPE else (v0_type,)):
                fields[layer_type].setdefault(group, {})[field] = v0_field
    return {"types": types, "fields": fields, "padding": V0_PADDING_TYPE}
