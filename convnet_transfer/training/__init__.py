"""Stage 4: `caffe train` per net (engine on PyTorch, real Caffe) and the runners (Slurm, local pool)."""
