"""Stages 1-2: image lists -> split lists -> Datum databases + mean (splits, databases, datasets, images)."""
