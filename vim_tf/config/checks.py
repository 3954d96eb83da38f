"""Argument checks for model constructors: a bad gin value fails at construction, before any
variable, file or dataset exists, with a message naming the parameter, its value and the valid
values (e.g. "ViTVQGAN.codebook_size must be an int >= 1, got 'big' (a str)").
"""

import numbers


def _got(value):
    shown = repr(value)
    if isinstance(value, (bool, str, float)) or not isinstance(value, numbers.Number):
        shown += f" (a {type(value).__name__})"
    return shown


def check_int(owner, name, value, minimum=1, hint=""):
    """`value` as an int >= `minimum`; bools, floats and strings are refused.

    Args:
      owner: the configurable's name, e.g. "ViTVQGAN" (or "ViTVQGAN.encoder" for a dict).
      name: the parameter (or dict key, e.g. "['num_heads']").
      hint: appended to the message, e.g. " (8192 in the paper)".
    """
    sep = "" if name.startswith("[") else "."
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner}{sep}{name} must be an int >= {minimum}, got {_got(value)}{hint}")
    return int(value)


def check_float(owner, name, value, low=None, high=None, low_open=False, high_open=False):
    """`value` as a float inside the interval given by `low`/`high` (None: unbounded)."""
    sep = "" if name.startswith("[") else "."
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            valid = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            valid = f"{'>' if low_open else '>='} {low}"
        elif high is not None:
            valid = f"{'<' if high_open else '<='} {high}"
        else:
            valid = "a number"
        raise ValueError(f"{owner}{sep}{name} must be a number {valid}, got {_got(value)}")
    return float(value)


def check_heads(owner, num_heads, hidden_dim, heads_name="num_heads", dim_name="hidden_dim"):
    """Attention heads must split the width evenly; the message lists the valid head counts."""
    if hidden_dim % num_heads:
        valid = [d for d in range(1, hidden_dim + 1) if hidden_dim % d == 0]
        sep = "" if heads_name.startswith("[") else "."
        raise ValueError(
            f"{owner}{sep}{heads_name}={num_heads} does not divide {owner}{sep}{dim_name}="
            f"{hidden_dim}: valid head counts for width {hidden_dim} are {valid}"
        )
