"""Data layers whose tops the engine computes itself (DummyData, ...)."""
