"""The training worker: data readers, losses, the training loop, evaluation and publishing."""
