"""Caffe's own formats, the interfaces between stages: the caffe.proto schema, prototxt/binaryproto I/O."""
