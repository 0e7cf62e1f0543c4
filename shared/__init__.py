"""Code shared by the gateway, the inference worker and the trainer."""
