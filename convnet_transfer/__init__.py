"""How transferable are features in deep neural networks? (Yosinski, Clune, Bengio, Lipson, NIPS 2014).

One pipeline, one direction, each stage a module whose inputs and outputs are Caffe's own formats:

    splits      ILSVRC-style lists -> split lists (files.txt, idxmap.txt) + md5 manifest
    databases   split lists -> Datum LMDB/LevelDB + mean .binaryproto
    netgen      catalog of nets + templates/ -> generated/<net>/ (solver, train/val prototxts, train.sh)
    engine      `caffe train` on PyTorch (or real Caffe, see realcaffe)
    logs        Caffe logs of every era -> tables
    plots       tables -> the paper's figures
    experiment  all of the above on an embedded dataset, one command
    slurm       the experiment as Slurm job arrays
"""
__version__ = "0.1.0"
