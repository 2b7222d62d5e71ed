"""Serialized ONNX models read and extended through protobuf's wire format alone, so that the
torch-free runtime needs neither torch nor the `onnx` package (which the base install lacks):

- `external_tensor` finds a tensor that points at external data, before onnxruntime sees the bytes
  (onnxruntime would read that file relative to the current folder);
- `with_uint8_output` adds a uint8 pixel output, so onnxruntime returns 0..255 pixels from any decoder.

A QuantizeLinear with scale 1/255 and zero point 0 turns [0, 1] floats into uint8, rounding (half to
even) and saturating in one multi-threaded op, where numpy would need three passes over every pixel
on the caller's thread. The graph is extended by protobuf's own merge rule: a message field that
appears twice in the wire format is merged, and repeated fields are concatenated, so appending one
more `graph` field holding a node, two initializers and an output extends the model's graph.
"""

from __future__ import annotations

import struct

UINT8_OUTPUT = "sample_uint8"
_FLOAT, _UINT8 = 1, 2                  # onnx.TensorProto data types
# field numbers from onnx.proto3
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_OUTPUT = 1, 5, 12
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE = 1, 2, 3, 4
_TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 2, 8, 9
_VALUE_NAME, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_TYPE_ELEM = 1, 2, 1, 1


def with_uint8_output(model: bytes, source: str = "sample") -> bytes:
    """The model, plus an output `sample_uint8` = QuantizeLinear(source, 1/255, 0): round(255 x)."""
    scale, zero = f"{UINT8_OUTPUT}_scale", f"{UINT8_OUTPUT}_zero_point"
    node = (_text(_NODE_INPUT, source) + _text(_NODE_INPUT, scale) + _text(_NODE_INPUT, zero)
            + _text(_NODE_OUTPUT, UINT8_OUTPUT) + _text(_NODE_NAME, f"to_{UINT8_OUTPUT}")
            + _text(_NODE_OP_TYPE, "QuantizeLinear"))
    graph = (_field(_GRAPH_NODE, node)
             + _field(_GRAPH_INITIALIZER, _scalar(scale, _FLOAT, struct.pack("<f", 1 / 255)))
             + _field(_GRAPH_INITIALIZER, _scalar(zero, _UINT8, b"\x00"))
             + _field(_GRAPH_OUTPUT, _text(_VALUE_NAME, UINT8_OUTPUT)
                      + _field(_VALUE_TYPE, _field(_TYPE_TENSOR, _int(_TENSOR_TYPE_ELEM, _UINT8)))))
    return model + _field(_MODEL_GRAPH, graph)


def _scalar(name: str, data_type: int, raw: bytes) -> bytes:
    return _int(_TENSOR_DATA_TYPE, data_type) + _text(_TENSOR_NAME, name) + _field(_TENSOR_RAW_DATA, raw)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(number: int, value: int) -> bytes:           # wire type 0: varint
    return _varint(number << 3) + _varint(value)


def _field(number: int, payload: bytes) -> bytes:     # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _text(number: int, value: str) -> bytes:
    return _field(number, value.encode())


# Where tensors live in an ONNX ModelProto, by protobuf field number (onnx/onnx.proto): for each
# message type, the fields that hold messages which may contain a TensorProto.
_ONNX_MESSAGES: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14


def external_tensor(model: bytes) -> str | None:
    """The name of the first tensor in `model` that uses external data, or None. Raises ValueError
    on bytes that are not a well-formed protobuf message."""
    return _external_tensor(memoryview(model), "model", 0)


def _external_tensor(buf: memoryview, kind: str, depth: int) -> str | None:
    """The name of the first tensor that uses external data, or None: a scan of the protobuf wire
    format (no `onnx` package, no file access). Raises ValueError on malformed data."""
    if depth > 64:
        raise ValueError("nested too deeply")
    name, external = "", False
    for field, value in _wire_fields(buf):
        if kind == "tensor":
            if field == _TENSOR_NAME and isinstance(value, memoryview):
                name = bytes(value).decode(errors="replace")
            external |= field == _TENSOR_EXTERNAL_DATA or (field == _TENSOR_DATA_LOCATION and value != 0)
        elif field in _ONNX_MESSAGES[kind] and isinstance(value, memoryview):
            found = _external_tensor(value, _ONNX_MESSAGES[kind][field], depth + 1)
            if found is not None:
                return found
    return (repr(name) if name else "(unnamed)") if external else None


def _wire_fields(buf: memoryview):
    """(field number, value) of each field in one protobuf message: an int, or a memoryview for
    length-delimited fields (submessages, strings, packed arrays)."""
    pos, end = 0, len(buf)

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ValueError("truncated or malformed varint")
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    while pos < end:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            length = varint()
            value, pos = buf[pos: pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end or field == 0:
            raise ValueError("truncated or malformed protobuf")
        yield field, value
