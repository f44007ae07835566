#!/usr/bin/env python3
"""Parse Include/lorakit.h into a table of the C ABI: constants, typedefs, opaque handles, structs,
callback types and functions (name, return type, parameter types and names).

One parser, two users:
  - Tests/abi/ (the libffi sweep): `abi_table.py --c-table HEADER > abi_table.h` writes the table as C
    (generated at build time by Tests/abi/run.sh, so it cannot go stale; the sweep then checks it against
    `nm -D` of the library and each parsed constant against the compiler's value);
  - bindings/python/tests/test_header_mirror.py: imports this module and checks the ctypes mirror
    (bindings/python/lorakit/_lib.py) against the header.

The parser is strict: any top-level text of the header it does not understand is an error, so a new kind
of declaration cannot be skipped silently. No third-party modules.

    python3 scripts/abi_table.py [HEADER]            # a readable summary
    python3 scripts/abi_table.py --json [HEADER]     # the table as JSON
    python3 scripts/abi_table.py --c-table [HEADER]  # the table as C (for Tests/abi/abi_sweep.c)
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_HEADER = Path(__file__).resolve().parents[1] / "Include" / "lorakit.h"

# The comment that starts the fields added after a struct's first published version (lorakit.h rule:
# params structs only grow at the end). Fields before it form the struct's first version.
FIRST_VERSION_MARKER = "Added after the first version"
_MARK = "__LK_FIRST_VERSION_END__"

SCALARS = {"int32_t", "uint32_t", "int64_t", "uint64_t", "uint8_t", "int8_t", "float", "double", "size_t",
           "char", "void"}


class HeaderParseError(ValueError):
    pass


@dataclass
class CType:
    """A C type as written, normalised ("const char *const *"), with its parts."""
    text: str
    base: str            # the named type: "char", "lk_adapter", "lk_train_params", "int64_t", ...
    pointers: int        # number of '*'
    const_base: bool     # `const` applies to the base type (const char *)
    const_ptrs: list     # per pointer level from the base outwards: is that pointer itself const

    @staticmethod
    def parse(text: str) -> "CType":
        t = " ".join(text.replace("*", " * ").split())
        toks = t.split(" ")
        base = None
        const_base = False
        pointers = 0
        const_ptrs: list[bool] = []
        for tok in toks:
            if tok == "const":
                if pointers == 0:
                    const_base = True
                else:
                    const_ptrs[-1] = True
            elif tok == "*":
                pointers += 1
                const_ptrs.append(False)
            elif tok in ("struct", "enum", "unsigned", "signed"):
                raise HeaderParseError(f"type '{text}': use the typedef names and sized integer types")
            else:
                if base is not None:
                    raise HeaderParseError(f"type '{text}': two type names ({base}, {tok})")
                base = tok
        if base is None:
            raise HeaderParseError(f"type '{text}' has no type name")
        norm = ("const " if const_base else "") + base
        for c in const_ptrs:
            norm += "*" if norm.endswith("*") else " *"
            if c:
                norm += "const"
        return CType(norm, base, pointers, const_base, const_ptrs)


@dataclass
class Param:
    name: str
    type: CType


@dataclass
class Field:
    name: str
    type: CType


@dataclass
class Struct:
    name: str
    fields: list
    first_version_fields: int   # fields of the struct's first version (all, without the marker)
    sized: bool                 # starts with uint32_t struct_size


@dataclass
class Callback:
    name: str
    ret: CType
    params: list


@dataclass
class Function:
    name: str
    ret: CType
    params: list


@dataclass
class Constant:
    name: str
    value: int
    source: str   # "define" or "enum"


@dataclass
class Header:
    constants: list = field(default_factory=list)   # Constant, in header order
    typedefs: dict = field(default_factory=dict)    # name -> CType (scalar typedefs: lk_status, lk_dtype)
    opaque: list = field(default_factory=list)      # handle type names, in header order
    structs: list = field(default_factory=list)     # Struct
    callbacks: list = field(default_factory=list)   # Callback
    functions: list = field(default_factory=list)   # Function, in header order
    macros: list = field(default_factory=list)      # function-like macros (names)

    # Lookups
    def struct(self, name: str) -> Struct | None:
        return next((s for s in self.structs if s.name == name), None)

    def callback(self, name: str) -> Callback | None:
        return next((c for c in self.callbacks if c.name == name), None)

    def function(self, name: str) -> Function | None:
        return next((f for f in self.functions if f.name == name), None)

    def resolve(self, t: CType) -> str:
        """The base type with scalar typedefs resolved (lk_status -> int32_t)."""
        b = t.base
        while b in self.typedefs:
            b = self.typedefs[b].base
        return b


def _strip_comments(text: str) -> str:
    def repl(m: re.Match) -> str:
        body = m.group(0)
        if FIRST_VERSION_MARKER in body:
            return f" {_MARK}; "
        return " " if body.startswith("/*") else "\n"
    return re.sub(r"/\*.*?\*/|//[^\n]*", repl, text, flags=re.S)


def _split_params(text: str, where: str) -> list[Param]:
    text = " ".join(text.split())
    if text in ("", "void"):
        return []
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(.*?[\s*])(\w+)\s*", part)
        if not m:
            raise HeaderParseError(f"{where}: cannot read parameter '{part.strip()}' (every parameter needs a name)")
        out.append(Param(m.group(2), CType.parse(m.group(1))))
    return out


def _int(text: str, where: str) -> int:
    t = text.strip()
    try:
        return int(t, 0)
    except ValueError:
        raise HeaderParseError(f"{where}: value '{t}' is not an integer literal") from None


def parse(text: str) -> Header:
    h = Header()
    # Preprocessor lines first (with continuations).
    text = _strip_comments(text)
    lines = text.split("\n")
    body_lines: list[str] = []
    i = 0
    skip_cplusplus = 0
    while i < len(lines):
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        i += 1
        s = line.strip()
        if s.startswith("#"):
            d = " ".join(s[1:].split())
            if d.startswith("ifdef __cplusplus"):
                skip_cplusplus += 1
                continue
            if skip_cplusplus and d.startswith("endif"):
                skip_cplusplus -= 1
                continue
            m = re.fullmatch(r"define (LK_\w+) (-?(?:0x[0-9a-fA-F]+|\d+))", d)
            if m:
                h.constants.append(Constant(m.group(1), _int(m.group(2), m.group(1)), "define"))
                continue
            m = re.fullmatch(r"define (\w+)\(.*", d)
            if m:
                h.macros.append(m.group(1))
                continue
            if re.fullmatch(r"(ifndef|define) LORAKIT_H|endif|include <std(def|int)\.h>|if defined\(_WIN32\)|else"
                            r"|define LK_API .*", d):
                continue
            raise HeaderParseError(f"unknown preprocessor line: #{d}")
        if skip_cplusplus:
            continue  # extern "C" { / }
        body_lines.append(line)
    body = " ".join(" ".join(body_lines).split())

    patterns = [
        ("struct", r"typedef struct (\w+) \{(.*?)\} (\w+) ;"),
        ("opaque", r"typedef struct (\w+) (\w+) ;"),
        ("enum", r"enum \{(.*?)\} ;"),
        ("callback", r"typedef ([\w\s*]+?) \( ?\* ?(\w+) ?\) ?\((.*?)\) ;"),
        ("typedef", r"typedef ([\w\s*]+?) (\w+) ;"),
        ("function", r"LK_API ([\w\s*]+?) ?\b(lk_\w+) ?\((.*?)\) ;"),
    ]
    # Normalise spaces around punctuation so the patterns above see single spaces.
    body = re.sub(r"\s*([{}();,])\s*", r" \1 ", body)
    body = " ".join(body.split())
    pos = 0
    n = len(body)
    while pos < n:
        if body[pos] == " ":
            pos += 1
            continue
        for kind, pat in patterns:
            m = re.compile(pat).match(body, pos)
            if m:
                break
        else:
            raise HeaderParseError(f"cannot parse the header at: {body[pos:pos + 120]!r}")
        pos = m.end()
        if kind == "struct":
            tag, inner, name = m.groups()
            if tag != name:
                raise HeaderParseError(f"struct {tag} is typedef'd as {name}: use the same name")
            fields: list[Field] = []
            first = None
            for decl in [d.strip() for d in inner.split(";") if d.strip()]:
                if decl == _MARK:
                    first = len(fields)
                    continue
                fm = re.fullmatch(r"(.*?[\s*])(\w+)", decl)
                if not fm:
                    raise HeaderParseError(f"struct {name}: cannot read field '{decl}'")
                fields.append(Field(fm.group(2), CType.parse(fm.group(1))))
            sized = bool(fields) and fields[0].name == "struct_size" and fields[0].type.text == "uint32_t"
            h.structs.append(Struct(name, fields, len(fields) if first is None else first, sized))
        elif kind == "opaque":
            tag, name = m.groups()
            if tag != name:
                raise HeaderParseError(f"struct {tag} is typedef'd as {name}: use the same name")
            h.opaque.append(name)
        elif kind == "enum":
            value = -1
            for item in [x.strip() for x in m.group(1).split(",") if x.strip()]:
                em = re.fullmatch(r"(LK_\w+)(?: = (.+))?", item)
                if not em:
                    raise HeaderParseError(f"enum entry '{item}' is not LK_NAME [= value]")
                value = _int(em.group(2), em.group(1)) if em.group(2) is not None else value + 1
                h.constants.append(Constant(em.group(1), value, "enum"))
        elif kind == "callback":
            ret, name, params = m.groups()
            h.callbacks.append(Callback(name, CType.parse(ret), _split_params(params, name)))
        elif kind == "typedef":
            t, name = m.groups()
            h.typedefs[name] = CType.parse(t)
        elif kind == "function":
            ret, name, params = m.groups()
            h.functions.append(Function(name, CType.parse(ret), _split_params(params, name)))
    _check_names(h)
    return h


def _check_names(h: Header) -> None:
    known = SCALARS | set(h.typedefs) | set(h.opaque) | {s.name for s in h.structs} | {c.name for c in h.callbacks}
    seen: set[str] = set()
    for c in h.constants:
        if c.name in seen:
            raise HeaderParseError(f"constant {c.name} is defined twice")
        seen.add(c.name)

    def check(t: CType, where: str) -> None:
        if t.base not in known:
            raise HeaderParseError(f"{where}: unknown type {t.base}")
    for s in h.structs:
        for f in s.fields:
            check(f.type, f"{s.name}.{f.name}")
    for c in h.callbacks:
        check(c.ret, c.name)
        for p in c.params:
            check(p.type, f"{c.name}({p.name})")
    names: set[str] = set()
    for f in h.functions:
        if f.name in names:
            raise HeaderParseError(f"function {f.name} is declared twice")
        names.add(f.name)
        check(f.ret, f.name)
        for p in f.params:
            check(p.type, f"{f.name}({p.name})")


def parse_file(path: str | Path = DEFAULT_HEADER) -> Header:
    return parse(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------
# Parameter roles (for the libffi sweep): what kind of hostile values a parameter gets.
# ---------------------------------------------------------------------------------------------------

ROLES = (
    "HANDLE",        # lk_x *            a live handle of kind x
    "HANDLE_ARRAY",  # lk_x *const *     an array of handles
    "OUT_HANDLE",    # lk_x **           receives a new handle
    "PARAMS",        # const lk_x_params *   a sized params struct (NULL = defaults)
    "RESULT",        # lk_x *            a sized info/result struct the library writes
    "INIT",          # lk_x_params *     the struct an init function fills
    "CSTR",          # const char *      a NUL-terminated UTF-8 string (a path, a key)
    "TEXT",          # const char *x     followed by int64_t x_len
    "LEN",           # int64_t x_len
    "OUT_BUF",       # T *buf            followed by a capacity
    "CAPACITY",      # capacity / x_capacity
    "OUT_SCALAR",    # T *               one value written by the library
    "OUT_STR",       # char **           receives a library-allocated string
    "IN_ARRAY",      # const T *         an input array (or one input struct without struct_size)
    "COUNT",         # n / n_x           an element count
    "INT",           # int32_t           an enum, flag, id or number
    "FLOAT",         # float / double
    "CALLBACK",      # a function pointer typedef
    "USERDATA",      # void *user_data   passed through, never dereferenced
    "SIZE",          # size_t            a byte size
    "OWNED_STR",     # char *s           a string the library allocated (lk_string_free)
)


def param_role(h: Header, fn: Function, index: int) -> tuple[str, str]:
    """(role, detail): detail is the handle kind ("model"), struct name, or ""."""
    p = fn.params[index]
    t = p.type
    nxt = fn.params[index + 1] if index + 1 < len(fn.params) else None
    if h.callback(t.base) and t.pointers == 0:
        return "CALLBACK", t.base
    if t.base in h.opaque:
        kind = t.base[len("lk_"):]
        if t.pointers == 1:
            return "HANDLE", kind
        if t.pointers == 2 and t.const_ptrs == [True, False]:
            return "HANDLE_ARRAY", kind
        if t.pointers == 2 and not t.const_base and t.const_ptrs == [False, False]:
            return "OUT_HANDLE", kind
    st = h.struct(t.base)
    if st and t.pointers == 1:
        if st.sized:
            if t.const_base:
                return "PARAMS", st.name
            if fn.ret.text == "void" and "_init" in fn.name:
                return "INIT", st.name
            return "RESULT", st.name
        if t.const_base:
            return "IN_ARRAY", st.name
    base = h.resolve(t)
    if t.pointers == 0:
        if p.name == "capacity" or p.name.endswith("_capacity"):
            return "CAPACITY", ""
        if p.name.endswith("_len") and base == "int64_t":
            return "LEN", ""
        if p.name == "n" or p.name.startswith("n_"):
            if base in ("int32_t", "int64_t"):
                return "COUNT", ""
        if base in ("int32_t", "int64_t", "uint32_t", "uint64_t"):
            return "INT", ""
        if base in ("float", "double"):
            return "FLOAT", ""
        if base == "size_t":
            return "SIZE", ""
    if t.pointers == 1:
        if base == "char" and t.const_base:
            if nxt is not None and nxt.name == f"{p.name}_len":
                return "TEXT", ""
            return "CSTR", ""
        if base == "void" and p.name == "user_data":
            return "USERDATA", ""
        if not t.const_base and base in SCALARS:
            if nxt is not None and (nxt.name == "capacity" or nxt.name.endswith("_capacity")):
                return "OUT_BUF", base
            if base == "char" and fn.name.endswith("_free"):
                return "OWNED_STR", ""
            return "OUT_SCALAR", base
        if t.const_base and base in SCALARS:
            return "IN_ARRAY", base
    if t.pointers == 2 and base == "char" and not t.const_base and t.const_ptrs == [False, False]:
        return "OUT_STR", ""
    raise HeaderParseError(f"{fn.name}: no sweep role for parameter {t.text} {p.name}: extend param_role()")


# ---------------------------------------------------------------------------------------------------
# C table (Tests/abi)
# ---------------------------------------------------------------------------------------------------

def ffi_code(h: Header, t: CType) -> str:
    """The libffi type of a C type (as the sweep's enum): V, I32, U32, I64, U64, F32, F64, SZ, PTR."""
    if t.pointers or h.callback(t.base):
        return "T_PTR"
    b = h.resolve(t)
    return {"void": "T_VOID", "int32_t": "T_I32", "uint32_t": "T_U32", "int64_t": "T_I64", "uint64_t": "T_U64",
            "float": "T_F32", "double": "T_F64", "size_t": "T_SZ", "uint8_t": "T_U8", "int8_t": "T_I8"}[b]


def _cstr(s: str) -> str:
    return json.dumps(s)


def c_table(h: Header, header_name: str = "lorakit.h") -> str:
    out = [
        "/* Generated by scripts/abi_table.py from " + header_name + " at build time: do not edit. */",
        "#include <stddef.h>",
        "#include <lorakit.h>",
        "",
        "static const abi_const abi_constants[] = {",
    ]
    for c in h.constants:
        out.append(f"    {{{_cstr(c.name)}, (long long)({c.name}), {c.value}LL}},")
    out.append("};")
    out.append("")
    for s in h.structs:
        out.append(f"static const abi_field abi_fields_{s.name}[] = {{")
        for f in s.fields:
            out.append(f"    {{{_cstr(f.name)}, {_cstr(f.type.text)}, {ffi_code(h, f.type)}, "
                       f"offsetof({s.name}, {f.name}), sizeof(((const {s.name} *)0)->{f.name})}},")
        out.append("};")
    out.append("static const abi_struct abi_structs[] = {")
    for s in h.structs:
        if s.first_version_fields < len(s.fields):
            last = s.fields[s.first_version_fields - 1].name
            first = f"offsetof({s.name}, {last}) + sizeof(((const {s.name} *)0)->{last})"
        else:
            first = f"sizeof({s.name})"
        out.append(f"    {{{_cstr(s.name)}, sizeof({s.name}), {first}, {int(s.sized)}, {len(s.fields)}, "
                   f"abi_fields_{s.name}}},")
    out.append("};")
    out.append("")
    out.append("static const abi_fn abi_functions[] = {")
    for fn in h.functions:
        params = []
        for i, p in enumerate(fn.params):
            role, detail = param_role(h, fn, i)
            params.append(f"{{{_cstr(p.name)}, {_cstr(p.type.text)}, {ffi_code(h, p.type)}, R_{role}, {_cstr(detail)}}}")
        plist = ", ".join(params) if params else "{0}"
        out.append(f"    {{{_cstr(fn.name)}, {_cstr(fn.ret.text)}, {ffi_code(h, fn.ret)}, {len(fn.params)}, {{{plist}}}}},")
    out.append("};")
    out.append("")
    out.append("static const char *const abi_opaque[] = {" + ", ".join(_cstr(o) for o in h.opaque) + "};")
    out.append(f"#define ABI_N_CONSTANTS {len(h.constants)}")
    out.append(f"#define ABI_N_STRUCTS {len(h.structs)}")
    out.append(f"#define ABI_N_FUNCTIONS {len(h.functions)}")
    out.append(f"#define ABI_N_OPAQUE {len(h.opaque)}")
    return "\n".join(out) + "\n"


def summary(h: Header) -> str:
    lines = [f"{len(h.constants)} constants, {len(h.opaque)} handle types, {len(h.structs)} structs, "
             f"{len(h.callbacks)} callback types, {len(h.functions)} functions"]
    for fn in h.functions:
        args = ", ".join(f"{p.type.text} {p.name} [{'/'.join(x for x in param_role(h, fn, i) if x)}]"
                         for i, p in enumerate(fn.params))
        lines.append(f"  {fn.ret.text} {fn.name}({args})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    mode = "summary"
    args = list(argv)
    if args and args[0] in ("--json", "--c-table", "--summary"):
        mode = args.pop(0)[2:]
    path = Path(args[0]) if args else DEFAULT_HEADER
    try:
        h = parse_file(path)
        if mode == "json":
            print(json.dumps(asdict(h), indent=1))
        elif mode == "c-table":
            sys.stdout.write(c_table(h, path.name))
        else:
            print(summary(h))
    except HeaderParseError as e:
        print(f"abi_table.py: {path}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
