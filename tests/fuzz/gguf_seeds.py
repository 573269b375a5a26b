#!/usr/bin/env python3
"""Writes small seed files for the GGUF fuzzer into the directory given as argv[1].

Seeds: valid GGUF v3 files with metadata of every value type (nested arrays
included) and one tensor of each type the quant routines handle, one with a
non-default general.alignment, and a few malformed variants of them. The fuzz
script adds the headers of the fixture model files.
"""
import os
import random
import struct
import sys

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FMT = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
              FLOAT32: "<f", BOOL: "<B", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
# ggml type id -> (block elements, block bytes, byte offsets of fp16 scales in a block)
TYPES = {0: (1, 4, []), 1: (1, 2, [0]), 30: (1, 2, []), 26: (1, 4, []), 8: (32, 34, [0]),
         10: (256, 84, [80, 82]), 12: (256, 144, [0, 2]), 16: (256, 66, [0])}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def value(vtype, v):
    if vtype == STRING:
        return gstr(v)
    if vtype == ARRAY:
        item_type, items = v
        return struct.pack("<IQ", item_type, len(items)) + b"".join(value(item_type, i) for i in items)
    return struct.pack(SCALAR_FMT[vtype], v)


def gguf(kv, tensors, alignment=32, version=3):
    """kv: [(key, type, value)]; tensors: [(name, ne, type_id, data bytes)]."""
    out = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kv))
    for key, vtype, v in kv:
        out += gstr(key) + struct.pack("<I", vtype) + value(vtype, v)
    data, offsets = b"", []
    for _, _, _, payload in tensors:
        data += b"\0" * ((-len(data)) % alignment)
        offsets.append(len(data))
        data += payload
    for (name, ne, type_id, _), off in zip(tensors, offsets):
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", type_id, off)
    out += b"\0" * ((-len(out)) % alignment)
    return out + data


def tensor_bytes(rng, type_id, ne):
    elems, nbytes, scales = TYPES[type_id]
    n = 1
    for d in ne:
        n *= d
    blob = bytearray(rng.getrandbits(8) for _ in range(n // elems * nbytes))
    for block in range(0, len(blob), nbytes):
        for at in scales:  # small finite fp16 scales
            blob[block + at:block + at + 2] = struct.pack("<e", rng.uniform(-0.01, 0.01))
    if type_id == 0:
        blob = bytearray(b"".join(struct.pack("<f", rng.uniform(-1, 1)) for _ in range(n)))
    return bytes(blob)


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(1234)
    kv = [
        ("general.architecture", STRING, "deepseek4"),
        ("u8", UINT8, 7), ("i8", INT8, -7), ("u16", UINT16, 700), ("i16", INT16, -700),
        ("deepseek4.block_count", UINT32, 6), ("i32", INT32, -70000), ("f32", FLOAT32, 1e-6),
        ("flag", BOOL, 1), ("u64", UINT64, 1 << 40), ("i64", INT64, -(1 << 40)), ("f64", FLOAT64, 16.0),
        ("deepseek4.attention.compress_ratios", ARRAY, (INT32, [0, 0, 4, 128, 4, 128, 0])),
        ("deepseek4.swiglu_clamp_exp", ARRAY, (FLOAT32, [10.0] * 6)),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "</s>", "a", "b", "ab", "\u00c4\u00a0"])),
        ("nested", ARRAY, (ARRAY, [(UINT8, [1, 2]), (UINT8, [])])),
    ]
    tensors = []
    for type_id, (elems, _, _) in TYPES.items():
        ne = [elems * (2 if elems > 1 else 8), 3]
        tensors.append((f"t{type_id}.weight", ne, type_id, tensor_bytes(rng, type_id, ne)))
    tensors.append(("expert.weight", [256, 2, 2], 16, tensor_bytes(rng, 16, [256, 2, 2])))

    seeds = {
        "valid_all_types.gguf": gguf(kv, tensors),
        "valid_alignment_64.gguf": gguf(kv + [("general.alignment", UINT32, 64)], tensors, 64),
        "valid_metadata_only.gguf": gguf(kv, []),
        "valid_empty.gguf": gguf([], []),
    }
    # A key given twice with different array lengths: the first occurrence wins (GGUF.md §2).
    seeds["duplicate_key.gguf"] = gguf(kv + [("deepseek4.swiglu_clamp_exp", ARRAY, (FLOAT32, [1.0] * 3))], [])
    base = seeds["valid_all_types.gguf"]
    seeds["bad_magic.gguf"] = b"GGUX" + base[4:]
    seeds["version_2.gguf"] = gguf(kv, tensors, version=2)
    seeds["truncated_header.gguf"] = base[:20]
    seeds["truncated_metadata.gguf"] = base[:200]
    seeds["truncated_data.gguf"] = base[:-1]
    for name, blob in seeds.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()
