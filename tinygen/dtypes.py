"""The dtypes tinygen supports, and the one function that turns user input into one of them."""
import numpy as np

float32 = np.dtype("float32")
float64 = np.dtype("float64")
float16 = np.dtype("float16")
int64 = np.dtype("int64")
int32 = np.dtype("int32")
uint8 = np.dtype("uint8")
bool_ = np.dtype("bool")

SUPPORTED = (float32, float64, float16, int64, int32, uint8, bool_)
_ALIASES = {"float": float32, "double": float64, "half": float16, "long": int64, "int": int32, "bool": bool_}


def as_dtype(dtype):
    """Normalise a dtype given as a NumPy dtype, a type or a name ("float32", "double", ...)."""
    if isinstance(dtype, str) and dtype in _ALIASES:
        return _ALIASES[dtype]
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"unsupported dtype {dtype!r}; tinygen supports {', '.join(d.name for d in SUPPORTED)}") from None
    if dt not in SUPPORTED:
        raise TypeError(f"unsupported dtype {dt.name!r}; tinygen supports {', '.join(d.name for d in SUPPORTED)}")
    return dt


def is_floating(dtype):
    return dtype.kind == "f"
