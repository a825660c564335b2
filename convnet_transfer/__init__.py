"""How transferable are features in deep neural networks? (Yosinski, Clune, Bengio, Lipson, NIPS 2014).

One pipeline, one direction, each stage a package whose inputs and outputs are Caffe's own formats
(docs/architecture.md):

    data/       stages 1-2: ILSVRC-style lists -> split lists + md5 manifest -> Datum LMDB/LevelDB + mean
    nets/       stage 3: the catalog of nets + templates/ -> generated/<net>/ (solver, prototxts, train.sh)
    training/   stage 4: `caffe train` per net: the engine on PyTorch or real Caffe, run by Slurm or a local pool
    results/    stage 5: Caffe logs of every era -> tables -> the paper's figures
    formats/    Caffe's schema and file formats, shared by every stage
    experiment  all of the above on an embedded dataset, one command
    cli/        one click command per tool in tools/
"""
__version__ = "0.1.0"
