"""Stage 5: Caffe logs -> tables -> the paper's figures."""
