"""The ctypes mirror (lorakit/_lib.py) checked against Include/lorakit.h (issue 10).

The header is parsed by scripts/abi_table.py, the same parser that generates the C ABI sweep's table
(Tests/abi), and every hand-typed piece of the mirror is compared with it:
  - every LK_* constant (value), and no LK_* constant in Python that the header lacks; the Pythonic
    enums (Status, DType, StopReason, AdapterFormat) and option tables cover their header family exactly;
  - every struct: field names in order, each field's ctypes type, and sizeof / every field offset against
    a C program compiled with cc against the header at test time (and lk_sizeof_*() of the library);
  - every function: restype and argtypes, and the C declaration in the comment above it;
  - the callback types' restype and argtypes.
A drift in any of them fails with the name of the function, struct or field.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from ctypes import POINTER
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
HEADER = ROOT / "Include" / "lorakit.h"
PARSER = ROOT / "scripts" / "abi_table.py"
sys.path.insert(0, str(HERE.parent))  # the binding from this checkout, installed or not

import lorakit  # noqa: E402
from lorakit import _lib  # noqa: E402

pytestmark = pytest.mark.skipif(not (HEADER.exists() and PARSER.exists()),
                                reason="Include/lorakit.h or scripts/abi_table.py not found (binding used "
                                       "outside its checkout)")


def _load_parser():
    spec = importlib.util.spec_from_file_location("abi_table", PARSER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["abi_table"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


abi_table = _load_parser() if PARSER.exists() else None
H = abi_table.parse_file(HEADER) if abi_table and HEADER.exists() else None

SCALARS = {
    "int8_t": ctypes.c_int8, "uint8_t": ctypes.c_uint8, "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
    "int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64, "float": ctypes.c_float, "double": ctypes.c_double,
    "size_t": ctypes.c_size_t,
}

# Deliberate, documented deviations of the mirror from the plain mapping: (owner, parameter) -> ctypes.
# Each must still be ABI-identical (a pointer for a pointer) and must be used (no stale entries).
DEVIATIONS = {
    # "piece as a void pointer: it is not NUL-terminated; read piece_len bytes with ctypes.string_at"
    ("lk_token_callback", "piece"): ctypes.c_void_p,
}
_used_deviations: set = set()


def expected_ctypes(t, owner: str, name: str) -> set:
    """The ctypes objects that mirror C type `t` (of parameter/field `name` of `owner`)."""
    if (owner, name) in DEVIATIONS:
        _used_deviations.add((owner, name))
        return {DEVIATIONS[(owner, name)]}
    base = H.resolve(t)
    if t.pointers == 0:
        if H.callback(t.base):
            return {getattr(_lib, t.base)}
        if base == "void":
            return {None}
        return {SCALARS[base]}
    if t.pointers == 1:
        if t.base in H.opaque or base == "void":
            return {ctypes.c_void_p}
        if H.struct(t.base):
            return {POINTER(getattr(_lib, t.base))}
        if base == "char":
            # const char *: a NUL-terminated string; char *: a caller buffer the library writes.
            return {ctypes.c_char_p} if t.const_base else {ctypes.c_void_p, POINTER(ctypes.c_char)}
        return {POINTER(SCALARS[base])}
    if t.pointers == 2:
        if t.base in H.opaque:
            return {POINTER(ctypes.c_void_p)}  # lk_x ** (out) and lk_x *const * (array of handles)
        if base == "char":
            if t.const_base:
                return {POINTER(ctypes.c_char_p)}  # const char *const *: an array of strings
            # char **: a library-allocated string (read with string_at, then lk_string_free)
            return {POINTER(ctypes.c_char_p), POINTER(ctypes.c_void_p)}
    raise AssertionError(f"{owner}.{name}: no ctypes mapping for {t.text}: extend expected_ctypes()")


def _name(c) -> str:
    return "None" if c is None else getattr(c, "__name__", repr(c))


# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------

def test_parser_reads_the_header():
    # A sanity floor, so a parser that silently reads nothing cannot pass the comparisons below.
    assert len(H.functions) >= 70 and len(H.structs) >= 10 and len(H.constants) >= 30
    assert {"lk_model", "lk_context", "lk_tensor", "lk_adapter", "lk_trainer"} <= set(H.opaque)
    fn = H.function("lk_tokenize")
    assert [p.name for p in fn.params] == ["model", "text", "text_len", "add_special", "parse_special", "tokens",
                                           "capacity", "n_tokens"]
    assert fn.params[0].type.text == "const lk_model *" and fn.ret.text == "lk_status"
    tp = H.struct("lk_train_params")
    assert tp.fields[tp.first_version_fields - 1].name == "log_path"  # the first version ends there


def test_constants_match_header():
    header = {c.name: c.value for c in H.constants}
    for name, value in header.items():
        py = "ABI_VERSION" if name == "LK_ABI_VERSION" else name
        assert hasattr(_lib, py), f"_lib.py lacks {py} (lorakit.h: {name} = {value})"
        assert getattr(_lib, py) == value, f"{py}: _lib.py has {getattr(_lib, py)}, lorakit.h has {value}"
    stale = sorted(n for n in vars(_lib) if re.fullmatch(r"LK_[A-Z0-9_]+", n) and n not in header)
    assert not stale, f"_lib.py defines constants lorakit.h does not: {stale}"


def _family(prefix_re: str) -> set:
    return {c.value for c in H.constants if re.fullmatch(prefix_re, c.name)}


@pytest.mark.parametrize("python_side, family", [
    ("Status", r"LK_(OK|STOPPED|ERR_\w+)"),
    ("DType", r"LK_DTYPE_\w+"),
    ("StopReason", r"LK_STOP_\w+"),
    ("AdapterFormat", r"LK_ADAPTER_\w+"),
    ("_LOGITS", r"LK_LOGITS_\w+"),
    ("_INITS", r"LK_LORA_INIT_\w+"),
    ("_SCHEDULES", r"LK_SCHEDULE_\w+"),
    ("_TRUNCATIONS", r"LK_TRUNCATE_\w+"),
])
def test_python_enums_cover_their_header_family(python_side, family):
    obj = getattr(lorakit, python_side)
    values = {int(v) for v in (obj.values() if isinstance(obj, dict) else obj)}
    want = _family(family)
    assert want, f"no header constants match {family}"
    assert values == want, f"lorakit.{python_side} has {sorted(values)}, lorakit.h's {family} has {sorted(want)}"


# ---------------------------------------------------------------------------------------------------
# Structs
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    """{struct: (sizeof, {field: (offset, size)})} from a C program compiled against the header."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    assert cc, "a C compiler (cc or $CC) is needed to compute the header's struct layouts"
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "lorakit.h"', "int main(void) {"]
    for s in H.structs:
        lines.append(f'    printf("S {s.name} %zu\\n", sizeof({s.name}));')
        for f in s.fields:
            lines.append(f'    printf("F {s.name} {f.name} %zu %zu\\n", offsetof({s.name}, {f.name}), '
                         f'sizeof(((const {s.name} *)0)->{f.name}));')
    lines += ["    return 0;", "}"]
    d = tmp_path_factory.mktemp("layout")
    (d / "layout.c").write_text("\n".join(lines) + "\n")
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", str(HEADER.parent), "-o", str(d / "layout"),
                    str(d / "layout.c")], check=True, capture_output=True, text=True)
    out = subprocess.run([str(d / "layout")], check=True, capture_output=True, text=True).stdout
    layout: dict = {}
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "S":
            layout[parts[1]] = (int(parts[2]), {})
        else:
            layout[parts[1]][1][parts[2]] = (int(parts[3]), int(parts[4]))
    return layout


def test_every_struct_is_mirrored():
    names = [s.name for s in H.structs]
    missing = [n for n in names if not (isinstance(getattr(_lib, n, None), type)
                                        and issubclass(getattr(_lib, n), ctypes.Structure))]
    assert not missing, f"_lib.py has no ctypes Structure for {missing}"
    assert sorted(_lib.STRUCTS) == sorted(names), "_lib.STRUCTS must list every struct of lorakit.h"


@pytest.mark.parametrize("sname", [s.name for s in H.structs] if H else [])
def test_struct_fields_types_and_layout(sname, c_layout):
    s = H.struct(sname)
    py = getattr(_lib, sname)
    py_fields = [f[0] for f in py._fields_]
    assert py_fields == [f.name for f in s.fields], f"{sname}: field names/order differ from lorakit.h"
    for (fname, ftype), f in zip(py._fields_, s.fields):
        want = expected_ctypes(f.type, sname, f.name)
        assert ftype in want, (f"{sname}.{fname}: _lib.py has {_name(ftype)}, lorakit.h has {f.type.text} "
                               f"(expected {' or '.join(map(_name, want))})")
    size, fields = c_layout[sname]
    assert ctypes.sizeof(py) == size, f"sizeof({sname}): ctypes {ctypes.sizeof(py)}, C {size}"
    for fname, _ in py._fields_:
        off, fsize = fields[fname]
        desc = getattr(py, fname)
        assert (desc.offset, desc.size) == (off, fsize), \
            f"{sname}.{fname}: ctypes offset/size {desc.offset}/{desc.size}, C {off}/{fsize}"
    sizeof_fn = getattr(_lib.lib, f"lk_sizeof_{sname[3:]}")
    assert sizeof_fn() == size, f"lk_sizeof_{sname[3:]}() = {sizeof_fn()}, C sizeof = {size}"


# ---------------------------------------------------------------------------------------------------
# Functions and callbacks
# ---------------------------------------------------------------------------------------------------

def test_function_list_matches_header():
    assert list(_lib.FUNCTIONS) == [f.name for f in H.functions], \
        "_lib.FUNCTIONS must list lorakit.h's functions in header order"


@pytest.mark.parametrize("fname", [f.name for f in H.functions] if H else [])
def test_function_signature(fname):
    fn = H.function(fname)
    f = getattr(_lib.lib, fname)
    want_ret = expected_ctypes(fn.ret, fname, "return")
    assert f.restype in want_ret, f"{fname}: restype {_name(f.restype)}, lorakit.h returns {fn.ret.text}"
    assert f.argtypes is not None, f"{fname}: argtypes not set"
    assert len(f.argtypes) == len(fn.params), \
        f"{fname}: {len(f.argtypes)} argtypes, lorakit.h has {len(fn.params)} parameters"
    for i, (got, p) in enumerate(zip(f.argtypes, fn.params)):
        want = expected_ctypes(p.type, fname, p.name)
        assert got in want, (f"{fname} argument {i} ({p.name}): _lib.py has {_name(got)}, lorakit.h has "
                             f"{p.type.text} (expected {' or '.join(map(_name, want))})")


def _comment_declarations() -> dict:
    """{function: the C declaration written in the comment block above its _fn(...) line}."""
    lines = Path(_lib.__file__).read_text().splitlines()
    out = {}
    for i, line in enumerate(lines):
        m = re.match(r'_fn\("(lk_\w+)"', line)
        if not m:
            continue
        j = i
        while j > 0 and lines[j - 1].startswith("#"):
            j -= 1
        block = " ".join(l[1:].strip() for l in lines[j:i])
        d = re.search(r"([\w\s*]*?\b" + m.group(1) + r"\s*\([^)]*\))\s*;", block)
        out[m.group(1)] = d.group(1) if d else None
    return out


def test_each_function_is_preceded_by_its_header_declaration():
    decls = _comment_declarations()
    for fn in H.functions:
        assert decls.get(fn.name), f"{fn.name}: no C declaration comment above its _fn line in _lib.py"
        m = re.fullmatch(r"\s*(.*?)\b" + fn.name + r"\s*\((.*)\)", decls[fn.name])
        ret = abi_table.CType.parse(m.group(1))
        params = abi_table._split_params(m.group(2), fn.name)
        assert ret.text == fn.ret.text, f"{fn.name}: comment returns {ret.text}, lorakit.h {fn.ret.text}"
        assert [(p.type.text, p.name) for p in params] == [(p.type.text, p.name) for p in fn.params], \
            f"{fn.name}: the comment's declaration differs from lorakit.h's: {decls[fn.name]}"


@pytest.mark.parametrize("cname", [c.name for c in H.callbacks] if H else [])
def test_callback_type(cname):
    cb = H.callback(cname)
    py = getattr(_lib, cname)
    assert py._restype_ in expected_ctypes(cb.ret, cname, "return"), f"{cname}: restype {_name(py._restype_)}"
    assert len(py._argtypes_) == len(cb.params), f"{cname}: {len(py._argtypes_)} argtypes, header {len(cb.params)}"
    for got, p in zip(py._argtypes_, cb.params):
        want = expected_ctypes(p.type, cname, p.name)
        assert got in want, f"{cname}({p.name}): _lib.py has {_name(got)}, lorakit.h has {p.type.text}"


def test_deviations_are_used():
    # Runs after the tests above (file order): every documented deviation must still apply.
    for c in H.callbacks:
        for p in c.params:
            expected_ctypes(p.type, c.name, p.name)
    assert set(DEVIATIONS) == _used_deviations, f"stale DEVIATIONS: {set(DEVIATIONS) - _used_deviations}"
