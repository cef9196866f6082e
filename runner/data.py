"""Opening a data set's files and checking them where they enter: a damaged or wrong file is a
UserError that names it."""
import math
import os
import pickle

import torch

from runner.errors import UserError, failure


def open_dataset(make, name, where, files, n_classes, image_shape):
    """`make(download)` -> (train_images, train_labels, test_images, test_labels), as torchvision reads
    them from `files` (what -> [paths]: "train images", "train labels", "test images", "test labels",
    and any others it reads); downloaded where a file is missing (offline, a clear error says `where`).
    A damaged file, or data that fail check_dataset, is a UserError that names the file."""
    paths = list(dict.fromkeys(path for group in files.values() for path in group))
    missing = [os.path.basename(path) for path in paths if not os.path.isfile(path)]
    try:
        data = make(download=bool(missing))
    except Exception as err:  # torchvision raises several types for a failed download or a bad file
        if missing:
            raise UserError(f"{name} is not on disk ({', '.join(missing)} missing) and could not be downloaded "
                            f"({failure(err)}); {where}") from None
        raise UserError(damaged_file(name, paths, err)) from None
    check_dataset(name, data, files, n_classes, image_shape)
    return data


def damaged_file(name, paths, err):
    """The one line for data files that are all there but torchvision could not read: the first file
    that does not read as its format, else torchvision's own error."""
    for path in paths:
        problem = file_problem(path)
        if problem:
            return f"{name}: {path} is {problem}; replace it with the original file"
    return (f"{name}: torchvision could not read the files in {os.path.dirname(paths[0])} ({failure(err)}), though "
            "each one reads as its format: one may be damaged inside, or from another release")


def file_problem(path):
    """What is wrong with one data file, read as its format says (MNIST's IDX by its name, SVHN's .mat,
    else CIFAR's pickle), or None."""
    try:
        if path.endswith("-ubyte"):
            return idx_problem(path)
        if path.endswith(".mat"):
            import scipy.io
            scipy.io.loadmat(path)
        else:
            with open(path, "rb") as f:
                ArraysOnly(f, encoding="latin1").load()
    except Exception as err:
        return f"unreadable ({failure(err)})"
    return None


class ArraysOnly(pickle.Unpickler):
    """CIFAR's pickles hold dicts, lists, text and numpy arrays. Anything else a pickle names would run
    code on loading, so this reader refuses it: the diagnostic reads a file torchvision already
    failed on, and has no reason to run it a second time."""
    ARRAYS = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ARRAYS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file does not")
        return super().find_class(module, name)


def idx_problem(path):
    """MNIST's IDX format: bytes 0 0 8 d (unsigned bytes, d dimensions: the 3 or 1 of idx3 or idx1 in the
    name), d sizes as big-endian int32, then exactly their product of bytes. What is wrong, or None."""
    ndim = 3 if "-idx3-" in os.path.basename(path) else 1
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if not header:
        return "empty"
    if len(header) < 4 + 4 * ndim or header[:4] != bytes([0, 0, 8, ndim]):
        return (f"not an IDX file of {ndim}-dimensional unsigned bytes (it begins {header[:4].hex(' ')}, "
                f"not 00 00 08 0{ndim})")
    sizes = [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected, size = len(header) + math.prod(sizes), os.path.getsize(path)
    if size != expected:
        return (f"{'truncated' if size < expected else 'too long'}: its header declares {' x '.join(map(str, sizes))} "
                f"bytes ({expected:,} with the header), but the file has {size:,}")
    return None


def check_dataset(name, data, files, n_classes, image_shape):
    """Each set's images are uint8 of `image_shape` (C, H, W) and as many as its labels, which lie in
    [0, n_classes): the training and test sets agree with each other and with the networks."""
    shape = lambda dims: "x".join(map(str, dims))
    for key, split, images, labels in (("train", "training", *data[:2]), ("test", "test", *data[2:])):
        in_images, in_labels = named(files[f"{key} images"]), named(files[f"{key} labels"])
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != tuple(image_shape) or not len(images):
            raise UserError(f"{name}: {in_images}: {len(images)} {split} images of {images.dtype}, {shape(images.shape[1:])}; "
                            f"expected uint8 images of {shape(image_shape)}")
        if len(labels) != len(images):
            raise UserError(f"{name}: {in_labels}: {len(labels)} {split} labels for the {len(images)} images of {in_images}")
        outside = ((labels < 0) | (labels >= n_classes)).nonzero()
        if len(outside):
            i = outside[0].item()
            raise UserError(f"{name}: {in_labels}: label {labels[i].item()} of {split} image {i} is outside "
                            f"[0, {n_classes}): the file is damaged; replace it with the original file")


def named(paths):
    """Data files as an error message names them: the path of one, or the names of several and their folder."""
    if len(paths) == 1:
        return paths[0]
    return f"{', '.join(os.path.basename(p) for p in paths)} (in {os.path.dirname(paths[0])})"
