"""The Open Inference Protocol (KServe V2 REST), with Triton's binary tensor extension.

One model, :data:`MODEL_NAME`: one BYTES input of UTF-8 texts (any name, shape ``[n]`` or ``[n, 1]``)
and one BYTES output, :data:`OUTPUT_NAME`, holding one JSON list of entities per text. Its versions
are the registry's versions; an ``infer`` that names a version is answered only by that version.

``tritonclient.http`` sends input tensors as raw bytes after the JSON header (its length in the
``Inference-Header-Content-Length`` header; each BYTES element a 4-byte little-endian length and the
bytes) and asks for binary outputs unless told otherwise: both directions are handled here.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.interop.errors import InvalidRequest, ModelNotFound
from shared.predict.schemas import Entity

MODEL_NAME = "ner"
OUTPUT_NAME = "entities"
PLATFORM = "pytorch_transformers"
HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


class _Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class _RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] | None = None


class _InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_Tensor] = Field(min_length=1)
    outputs: list[_RequestedOutput] | None = None


@dataclass(frozen=True)
class InferCall:
    """What an infer request asks: its id, its texts and whether the output goes back as raw bytes."""

    request_id: str | None
    texts: list[str]
    binary_output: bool


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        out.extend(_flatten(value) if isinstance(value, list) else [value])
    return out


def _decode_bytes_tensor(raw: bytes, name: str) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest(f"input {name!r}: binary data ends inside an element's 4-byte length")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidRequest(f"input {name!r}: element {len(items)} is longer than the binary data left")
        items.append(raw[offset : offset + size])
        offset += size
    return items


def encode_bytes_tensor(items: Sequence[bytes]) -> bytes:
    """Triton's binary layout of a BYTES tensor (the inverse of the decoder above)."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def _texts(tensor: _Tensor, binary: bytes | None) -> list[str]:
    if tensor.datatype != "BYTES":
        raise InvalidRequest(f"input {tensor.name!r}: datatype is {tensor.datatype}; texts are BYTES")
    if len(tensor.shape) not in (1, 2) or any(dim < 0 for dim in tensor.shape):
        raise InvalidRequest(f"input {tensor.name!r}: shape {tensor.shape} is not [n] or [n, 1]")
    if binary is not None:
        items: list[Any] = _decode_bytes_tensor(binary, tensor.name)
    elif tensor.data is not None:
        items = _flatten(tensor.data)
    else:
        raise InvalidRequest(f"input {tensor.name!r}: no 'data' and no binary data")
    if len(items) != math.prod(tensor.shape):
        raise InvalidRequest(
            f"input {tensor.name!r}: shape {tensor.shape} holds {math.prod(tensor.shape)} elements, "
            f"the data has {len(items)}"
        )
    texts = []
    for index, item in enumerate(items):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"input {tensor.name!r}: element {index} is not UTF-8 text") from None
        if not isinstance(item, str):
            raise InvalidRequest(f"input {tensor.name!r}: element {index} is not a string")
        if not item:
            raise InvalidRequest(f"input {tensor.name!r}: element {index} is an empty text")
        texts.append(item)
    if not texts:
        raise InvalidRequest(f"input {tensor.name!r}: no texts")
    return texts


def parse_infer(body: bytes, header_length: str | None) -> InferCall:
    """An infer request's texts, from a JSON body or a JSON header followed by binary tensors."""
    binary = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise InvalidRequest(f"{HEADER_LENGTH}: {header_length!r} is not a length within the body")
        body, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = _InferRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidRequest(f"not an inference request: {where}: {first['msg']}") from None
    if len(request.inputs) != 1:
        raise InvalidRequest(f"expected one input tensor of texts, got {len(request.inputs)}")
    tensor = request.inputs[0]
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None and (not isinstance(size, int) or size < 0 or size != len(binary)):
        raise InvalidRequest(
            f"input {tensor.name!r}: binary_data_size {size!r} but {len(binary)} bytes follow the header"
        )
    if size is None and binary:
        raise InvalidRequest("binary data follows the header but no input has binary_data_size")
    texts = _texts(tensor, binary if size is not None else None)
    binary_output = bool((request.parameters or {}).get("binary_data_output", False))
    for output in request.outputs or ():
        if output.name != OUTPUT_NAME:
            raise InvalidRequest(f"unknown output {output.name!r}; this model has one: {OUTPUT_NAME!r}")
        binary_output = bool((output.parameters or {}).get("binary_data", binary_output))
    return InferCall(request_id=request.id, texts=texts, binary_output=binary_output)


def infer_response(
    *, call: InferCall, results: list[list[Entity]], model_version: int | None
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: one JSON entity list per text, as data or raw bytes."""
    lists = [json.dumps([entity.model_dump() for entity in entities]) for entities in results]
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [len(lists)]}
    answer: dict[str, Any] = {"model_name": MODEL_NAME, "outputs": [output]}
    if model_version is not None:
        answer["model_version"] = str(model_version)
    if call.request_id is not None:
        answer["id"] = call.request_id
    if not call.binary_output:
        output["data"] = lists
        return json.dumps(answer).encode(), {"Content-Type": "application/json"}
    raw = encode_bytes_tensor([item.encode() for item in lists])
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(answer).encode()
    return header + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def check_model(name: str) -> None:
    """404 for any model name but this service's one."""
    if name != MODEL_NAME:
        raise ModelNotFound(f"model {name!r} is not served here; the one model is {MODEL_NAME!r}")


def check_version(version: str, known: Sequence[int]) -> int:
    """The registry version a path names; 404 when it is not a number of the registry."""
    if not version.isdigit() or int(version) not in known:
        raise ModelNotFound(
            f"model {MODEL_NAME!r} has no version {version!r}; versions: {[str(v) for v in known]}"
        )
    return int(version)


def model_metadata(versions: Sequence[int]) -> dict[str, Any]:
    """The model's metadata: its registry versions (newest first), its one input and one output."""
    return {
        "name": MODEL_NAME,
        "versions": [str(version) for version in versions],
        "platform": PLATFORM,
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
    }


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "ner-service", "version": version, "extensions": ["binary_tensor_data"]}
