"""The HTTP gateway: synchronous predict, bulk jobs, training runs, the model registry and the web UI."""
