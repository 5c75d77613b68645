"""A stand-in for the two names of PyTorch the tutorial's training block uses (`torch.save`,
and `torch.load` in our tests), so the block runs unchanged without installing PyTorch (a
multi-GB download). Like torch.save, it writes a zip archive holding a pickle."""

import io
import pickle
import zipfile


def save(obj, f):
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj))


def load(f):
    # Needs a seekable file object, as the real torch.load does for zip checkpoints.
    with zipfile.ZipFile(f) as z:
        return pickle.loads(z.read("archive/data.pkl"))


class _Module:
    pass


nn = _Module()
io = io
