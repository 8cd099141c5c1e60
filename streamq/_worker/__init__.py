"""The worker: one consumer's path from read to settle, in private modules."""
