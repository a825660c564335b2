"""A Caffe-compatible training engine on PyTorch: `caffe train` on machines where Caffe no longer builds."""
from .errors import EngineError
from .net import Net, Param
from .upgrade import filter_net, insert_splits, read_net_file, upgrade_net
from .weights import read_caffemodel, write_caffemodel

__all__ = ["EngineError", "Net", "Param", "filter_net", "insert_splits", "read_net_file", "upgrade_net",
           "read_caffemodel", "write_caffemodel"]
