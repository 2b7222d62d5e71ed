"""Add a uint8 pixel output to a serialized ONNX decoder, with neither torch nor the `onnx` package,
so the torch-free runtime can ask onnxruntime for 0..255 pixels from any decoder file.

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
