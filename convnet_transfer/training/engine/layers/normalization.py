"""BatchNorm, Scale, Bias, MVN."""
