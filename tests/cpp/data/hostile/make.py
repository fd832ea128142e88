"""Writes hostile torch.save archives (committed; checkpoint_test.cc reads
them, and they seed the fuzz corpus): small pickles that describe huge
object graphs. Each must be refused quickly with INVALID_ARGUMENT."""
import zipfile
from pathlib import Path

here = Path(__file__).parent


def archive(name, pkl):
    with zipfile.ZipFile(here / name, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a/data.pkl", pkl)
        z.writestr("a/byteorder", b"little")
        z.writestr("a/data/0", b"\0" * 4)


def s(text):  # SHORT_BINUNICODE
    b = text.encode()
    return b"\x8c" + bytes([len(b)]) + b


# _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', 1), 0, (1,), (1,), False, OrderedDict-free ())
tensor = (s("torch._utils") + s("_rebuild_tensor_v2") + b"\x93" + b"((" + s("storage") + s("torch") +
          s("FloatStorage") + b"\x93" + s("0") + s("cpu") + b"K\x01t" + b"Q" + b"K\x00K\x01\x85K\x01\x85\x89)tR")
# Metadata lists L_k = [L_k-1, L_k-1], 60 levels: 2^60 visits as a tree.
p = b"\x80\x02}" + s("w") + tensor + b"s" + b"]q\x000" + b"](h\x00h\x00eq\x000" * 60 + s("m") + b"h\x00s."
archive("dag_metadata.pt", p)
# The same with a tensor at the bottom: 2^40 tensors by name.
p = b"\x80\x02}" + s("x") + b"]" + tensor + b"aq\x000" + b"](h\x00h\x00eq\x000" * 40 + b"h\x00s."
archive("dag_tensors.pt", p)
# 3 M one-byte objects (None), then a valid dict.
archive("many_objects.pt", b"\x80\x02" + b"N" * (3 << 20) + b"}" + s("w") + tensor + b"s.")
