"""Training runs as the API sees them: start, watch, cancel; nothing here imports torch.

Modules: ``service`` (create, read, list, cancel runs; the row updates a running run makes),
``params`` (the hyperparameters and their defaults), ``references`` (where a run's data comes
from, checked without reading it), ``uploads`` (training files sent to the gateway), ``status``
(progress, ETA, the "first model is training" message), ``bootstrap`` (the first run of a local
stack), ``schemas`` (the HTTP shapes), ``errors`` (each with its HTTP status). What needs torch
(readers, the loop, evaluation, the model card) is the ``trainer`` package.
"""
