"""The prototype's design, as the baseline for ``bench/predict.py``: one ``pipeline(...)`` call per request.

Run with ``BENCH_MODEL=<folder> uvicorn bench.reference_app:app``. Same model and the same
word-level aggregation as the gateway, so only the serving design differs.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

app = FastAPI(title="reference: pipeline per request")
ner = pipeline("token-classification", model=os.environ["BENCH_MODEL"], aggregation_strategy="first")


class Request(BaseModel):
    text: str


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict/")
def predict(request: Request) -> dict[str, list[dict[str, object]]]:
    entities = ner(request.text)
    return {
        "entities": [
            {
                "word": request.text[e["start"] : e["end"]],
                "entity_group": e["entity_group"],
                "score": float(e["score"]),
                "start": int(e["start"]),
                "end": int(e["end"]),
            }
            for e in entities
        ]
    }
