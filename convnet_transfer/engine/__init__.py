"""A Caffe-compatible training engine on PyTorch: `caffe train` on machines where Caffe no longer builds."""
