"""_native.py against fp4swift.h: the ctypes mirror must say what the C header says.

A wrong c_int32 for an int64_t, a missing binding or a reordered struct field does not fail a
call: it corrupts memory. So this test reads Sources/FP4CABI/include/fp4swift.h itself (a small
parser for its #defines, typedef structs and prototypes, cross-checked against pycparser when it
is installed) and checks, for everything the header declares:

- functions: a binding in _native.SIGNATURES, in the header's order, whose restype and argtypes
  are the ctypes of the C types (int32_t -> c_int32, T * -> POINTER(T), const char * -> c_char_p,
  struct pointers -> POINTER(Struct)), and that the loaded library's functions carry them;
- structs: _native.STRUCTS names the ctypes class of every typedef struct, whose _fields_ have
  the C names, types and order, and whose offsets, sizes and alignment equal the C layout
  (natural alignment computed here, and what gcc prints for offsetof/sizeof when gcc exists);
- constants: every #define FP4SWIFT_X exists as _native.X with the same value; the enum
  constants agree with the library's name tables.

Nothing is listed by hand: a function or struct added to the header is checked (and fails
until _native.py mirrors it). The last tests feed the checkers broken mirrors and assert that
they complain.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import pytest

from fp4swift import _native

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                      "Sources", "FP4CABI", "include", "fp4swift.h")
PREFIX = "FP4SWIFT_"

pytestmark = pytest.mark.skipif(not os.path.isfile(HEADER), reason=f"no C header at {HEADER} (not a source tree)")


# ---------------------------------------------------------------------------------------
# A small parser for the header's subset of C


@dataclass(frozen=True)
class CType:
    """A C type as the header spells it: base name (int32_t, float, fp4swift_quantizer, ...),
    pointer depth and whether the pointee is const."""

    base: str
    pointers: int = 0
    const: bool = False

    def __str__(self) -> str:
        return ("const " if self.const else "") + self.base + (" " + "*" * self.pointers if self.pointers else "")


@dataclass(frozen=True)
class CDecl:
    name: str
    type: CType


@dataclass(frozen=True)
class CFunction:
    name: str
    restype: CType
    params: Tuple[CDecl, ...]
    prototype: str  # whitespace-normalized, as in the header


@dataclass(frozen=True)
class Header:
    defines: Dict[str, int]
    structs: Dict[str, Tuple[CDecl, ...]]  # typedef name -> fields, in order
    functions: List[CFunction]             # in header order


_QUALIFIERS = {"const", "volatile", "struct", "restrict"}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def parse_decl(text: str, named: bool = True) -> CDecl:
    """'const float *x' -> CDecl('x', CType('float', 1, True)); named=False for a bare type."""
    tokens = re.findall(r"[A-Za-z_]\w*|\*|\S", text)
    bad = [t for t in tokens if t != "*" and not re.fullmatch(r"[A-Za-z_]\w*", t)]
    if bad:
        raise ValueError(f"cannot parse C declaration {text!r} (unexpected {bad})")
    const = "const" in tokens
    words = [t for t in tokens if t != "*" and t not in _QUALIFIERS]
    name = ""
    if named and len(words) >= 2:
        name = words.pop()
    if len(words) != 1:
        raise ValueError(f"cannot parse C declaration {text!r} (type words {words})")
    return CDecl(name, CType(words[0], tokens.count("*"), const))


def parse_header(text: str) -> Header:
    text = _strip_comments(text)
    defines: Dict[str, int] = {}
    for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(?:[ \t]+(.*?))?[ \t]*$", text, flags=re.M):
        name, value = m.group(1), (m.group(2) or "").strip()
        if not value:
            continue  # the include guard
        if re.fullmatch(r"\(\s*-\s*\w+\s*\)", value):  # a parenthesized negative literal: (-1)
            value = value.strip("() ").replace(" ", "")
        try:
            defines[name] = int(value.rstrip("uUlL"), 0)
        except ValueError:
            raise ValueError(f"#define {name} {value}: not an integer literal (teach test_abi_mirror.py)") from None
    # Drop the C++ guards (#ifdef __cplusplus ... #endif) and every other preprocessor line.
    text = re.sub(r"^[ \t]*#[ \t]*ifdef[ \t]+__cplusplus.*?^[ \t]*#[ \t]*endif[^\n]*$", " ", text, flags=re.M | re.S)
    text = re.sub(r"^[ \t]*#[^\n]*$", " ", text, flags=re.M)
    structs: Dict[str, Tuple[CDecl, ...]] = {}

    def struct(m: "re.Match[str]") -> str:
        fields = [parse_decl(f) for f in m.group(2).split(";") if f.strip()]
        structs[m.group(3)] = tuple(fields)
        return " "
    text = re.sub(r"typedef\s+struct\s*(\w*)\s*\{(.*?)\}\s*(\w+)\s*;", struct, text, flags=re.S)
    functions = []
    for stmt in text.split(";"):
        stmt = " ".join(stmt.split())
        if not stmt:
            continue
        m = re.fullmatch(r"(.*?)\b(\w+)\s*\((.*)\)", stmt)
        if not m:
            raise ValueError(f"cannot parse header statement {stmt!r} (teach test_abi_mirror.py)")
        params = m.group(3).strip()
        decls = () if params in ("", "void") else tuple(parse_decl(p) for p in params.split(","))
        functions.append(CFunction(m.group(2), parse_decl(m.group(1), named=False).type, decls, stmt + ";"))
    return Header(defines, structs, functions)


@pytest.fixture(scope="module")
def header() -> Header:
    with open(HEADER) as fh:
        return parse_header(fh.read())


# ---------------------------------------------------------------------------------------
# C types -> the ctypes the mirror must use

_SCALARS = {
    "int8_t": ctypes.c_int8, "uint8_t": ctypes.c_uint8, "int16_t": ctypes.c_int16, "uint16_t": ctypes.c_uint16,
    "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32, "int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64,
    "float": ctypes.c_float, "double": ctypes.c_double, "char": ctypes.c_char, "size_t": ctypes.c_size_t,
}


def expected_ctype(t: CType, structs: Dict[str, Any]) -> Any:
    """The ctypes type of a C type (None for void). structs: C typedef name -> ctypes class."""
    if t.pointers == 1 and t.base == "char":
        return ctypes.c_char_p
    if t.pointers == 1 and t.base == "void":
        return ctypes.c_void_p
    if t.base == "void" and t.pointers == 0:
        return None
    if t.base in _SCALARS:
        base = _SCALARS[t.base]
    elif t.base in structs:
        base = structs[t.base]
    else:
        raise KeyError(f"C type {t} has no ctypes counterpart (not a scalar, not a struct in _native.STRUCTS)")
    for _ in range(t.pointers):
        base = ctypes.POINTER(base)
    return base


# ctypes' fixed-width names are aliases (c_int32 is c_int, c_int64 is c_long): name them as written here.
_SPELLING = {v: f"ctypes.{k}" for k, v in reversed(list(vars(ctypes).items()))
             if k.startswith("c_") and isinstance(v, type)}
_SPELLING.update({getattr(ctypes, f"c_{k}"): f"c_{k}" for k in ("int8", "uint8", "int16", "uint16", "int32", "uint32",
                                                              "int64", "uint64", "float", "double", "char_p",
                                                              "void_p")})


def _name(t: Any) -> str:
    if t is None:
        return "None (void)"
    if isinstance(t, type) and issubclass(t, ctypes._Pointer):
        return f"POINTER({_name(t._type_)})"
    return _SPELLING.get(t, getattr(t, "__name__", repr(t)))


def function_problems(header: Header, signatures: Dict[str, Tuple[Any, List[Any]]],
                      structs: Dict[str, Any]) -> List[str]:
    """Every way `signatures` (name -> (restype, argtypes)) differs from the header's prototypes."""
    out = []
    declared = [f.name for f in header.functions]
    for f in header.functions:
        if f.name not in signatures:
            out.append(f"{f.name}: declared in fp4swift.h, no binding in _native.SIGNATURES ({f.prototype})")
            continue
        restype, argtypes = signatures[f.name]
        want_res = expected_ctype(f.restype, structs)
        if restype is not want_res:
            out.append(f"{f.name}: restype {_name(restype)}, the header returns {f.restype} -> {_name(want_res)}")
        if len(argtypes) != len(f.params):
            out.append(f"{f.name}: {len(argtypes)} argtypes, the header has {len(f.params)} parameters "
                       f"({f.prototype})")
            continue
        for i, (got, p) in enumerate(zip(argtypes, f.params)):
            want = expected_ctype(p.type, structs)
            if got is not want:
                out.append(f"{f.name}: argument {i} ({p.name}) is {_name(got)}, the header says {p.type} -> {_name(want)}")
    extra = [n for n in signatures if n not in declared]
    if extra:
        out.append(f"bindings of functions the header does not declare: {', '.join(extra)}")
    mirrored = [n for n in signatures if n in declared]
    if mirrored != [n for n in declared if n in signatures]:
        out.append("_native.SIGNATURES is not in the header's order")
    return out


# ---------------------------------------------------------------------------------------
# Struct layout: natural alignment (every scalar aligned to its size, structs to their widest member)


def c_layout(name: str, header: Header) -> Tuple[int, int, Dict[str, Tuple[int, int]]]:
    """(sizeof, alignof, {field: (offset, size)}) of a header struct under natural alignment."""
    offset, align, fields = 0, 1, {}
    for d in header.structs[name]:
        if d.type.pointers:
            size = a = ctypes.sizeof(ctypes.c_void_p)
        elif d.type.base in header.structs:
            size, a, _ = c_layout(d.type.base, header)
        else:
            size = a = ctypes.sizeof(_SCALARS[d.type.base])
        offset = -(-offset // a) * a
        fields[d.name] = (offset, size)
        offset += size
        align = max(align, a)
    return -(-offset // align) * align, align, fields


def struct_problems(name: str, cls: Any, header: Header, structs: Dict[str, Any]) -> List[str]:
    """Every way the ctypes class `cls` differs from the header's struct `name`."""
    out = []
    c_fields = header.structs[name]
    py_fields = list(getattr(cls, "_fields_", []))
    c_names, py_names = [d.name for d in c_fields], [f[0] for f in py_fields]
    if c_names != py_names:
        out.append(f"{name}: fields {py_names} in _native, {c_names} in the header")
    for d, f in zip(c_fields, py_fields):
        want = expected_ctype(d.type, structs)
        if d.name == f[0] and f[1] is not want:
            out.append(f"{name}.{d.name}: {_name(f[1])} in _native, {d.type} -> {_name(want)} in the header")
    size, align, layout = c_layout(name, header)
    for fname, (off, fsize) in layout.items():
        desc = getattr(cls, fname, None)
        if desc is None:
            continue
        if (desc.offset, desc.size) != (off, fsize):
            out.append(f"{name}.{fname}: offset {desc.offset} size {desc.size} in _native, "
                       f"offset {off} size {fsize} in C")
    if (ctypes.sizeof(cls), ctypes.alignment(cls)) != (size, align):
        out.append(f"{name}: sizeof {ctypes.sizeof(cls)} alignof {ctypes.alignment(cls)} in _native, "
                   f"{size} and {align} in C")
    return out


# ---------------------------------------------------------------------------------------
# The checks


def test_header_parses_to_something(header):
    """The parser saw the header's declarations (a parser that finds nothing checks nothing)."""
    assert "FP4SWIFT_ABI_VERSION" in header.defines
    assert "fp4swift_abi_version" in [f.name for f in header.functions]
    assert header.structs and all(header.structs.values())
    # Every identifier followed by "(" outside #defines is a function the parser understood.
    with open(HEADER) as fh:
        text = _strip_comments(fh.read())
    text = re.sub(r"^[ \t]*#[^\n]*$", " ", text, flags=re.M)
    called = set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", text))
    assert called == {f.name for f in header.functions}


def test_parser_agrees_with_pycparser(header):
    """An independent C parser finds the same functions, parameters and struct fields."""
    pycparser = pytest.importorskip("pycparser")
    from pycparser import c_ast

    with open(HEADER) as fh:
        text = _strip_comments(fh.read())
    text = re.sub(r"^[ \t]*#[ \t]*ifdef[ \t]+__cplusplus.*?^[ \t]*#[ \t]*endif[^\n]*$", " ", text, flags=re.M | re.S)
    text = re.sub(r"^[ \t]*#[^\n]*$", " ", text, flags=re.M)
    fixed = "".join(f"typedef int {t};\n" for t in _SCALARS if t.endswith("_t"))
    ast = pycparser.CParser().parse(fixed + text, filename="fp4swift.h")

    def ctype(node: Any) -> CType:
        n, const = 0, False
        while isinstance(node, c_ast.PtrDecl):
            n += 1
            node = node.type
        const = "const" in getattr(node, "quals", [])
        names = node.type.names if isinstance(node.type, c_ast.IdentifierType) else [node.type.name]
        return CType(" ".join(names), n, const)

    funcs, structs = [], {}
    for ext in ast.ext:
        if isinstance(ext, c_ast.Decl) and isinstance(ext.type, c_ast.FuncDecl):
            fd = ext.type
            params = [] if fd.args is None else [p for p in fd.args.params
                                                  if not (isinstance(p, c_ast.Typename) and ctype(p.type).base == "void")]
            funcs.append((ext.name, ctype(fd.type), tuple((p.name, ctype(p.type)) for p in params)))
        elif isinstance(ext, c_ast.Typedef) and isinstance(ext.type.type, c_ast.Struct):
            structs[ext.name] = tuple((d.name, ctype(d.type)) for d in ext.type.type.decls)
    assert funcs == [(f.name, f.restype, tuple((p.name, p.type) for p in f.params)) for f in header.functions]
    assert structs == {k: tuple((d.name, d.type) for d in v) for k, v in header.structs.items()}


def test_every_function_has_a_matching_binding(header):
    problems = function_problems(header, _native.SIGNATURES, _native.STRUCTS)
    assert not problems, "\n".join(problems)


def test_the_loaded_library_uses_those_signatures(header):
    for f in header.functions:
        fn = getattr(_native.lib, f.name)
        restype, argtypes = _native.SIGNATURES[f.name]
        assert fn.restype is restype and list(fn.argtypes) == list(argtypes), f.name


def test_every_struct_is_mirrored(header):
    assert sorted(_native.STRUCTS) == sorted(header.structs), "_native.STRUCTS must name every typedef struct"
    mirrors = {v for v in vars(_native).values() if isinstance(v, type) and issubclass(v, ctypes.Structure)}
    assert mirrors == set(_native.STRUCTS.values()), "every ctypes.Structure in _native mirrors a header struct"


def test_struct_fields_and_layout(header):
    problems = [p for name, cls in _native.STRUCTS.items() for p in struct_problems(name, cls, header, _native.STRUCTS)]
    assert not problems, "\n".join(problems)


def test_struct_layout_as_gcc_compiles_it(header, tmp_path):
    """offsetof / sizeof / alignof of every struct field and the value of every #define, from
    a program compiled against the header (the ABI as a C caller sees it)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    lines = ["#include <stddef.h>", "#include <stdio.h>", f'#include "{os.path.abspath(HEADER)}"', "int main(void) {"]
    for name, fields in header.structs.items():
        lines.append(f'    printf("{name} %zu %zu\\n", sizeof({name}), _Alignof({name}));')
        for d in fields:
            lines.append(f'    printf("{name}.{d.name} %zu %zu\\n", offsetof({name}, {d.name}), '
                         f'sizeof((({name} *)0)->{d.name}));')
    for name in header.defines:
        lines.append(f'    printf("{name} %lld 0\\n", (long long)({name}));')
    lines += ["    return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True, capture_output=True)
    got = {}
    for ln in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        key, a, b = ln.split()
        got[key] = (int(a), int(b))
    for name, cls in _native.STRUCTS.items():
        assert got[name] == (ctypes.sizeof(cls), ctypes.alignment(cls)), name
        for d in header.structs[name]:
            desc = getattr(cls, d.name)
            assert got[f"{name}.{d.name}"] == (desc.offset, desc.size), f"{name}.{d.name}"
    for name, value in header.defines.items():
        assert got[name][0] == value, name


def test_every_define_is_a_native_constant(header):
    assert header.defines["FP4SWIFT_ABI_VERSION"] == _native.ABI_VERSION
    for name, value in header.defines.items():
        assert name.startswith(PREFIX), f"#define {name} lacks the {PREFIX} prefix"
        py = name[len(PREFIX):]
        assert hasattr(_native, py), f"#define {name} has no _native.{py}"
        assert getattr(_native, py) == value, f"_native.{py} = {getattr(_native, py)}, #define {name} {value}"


@pytest.mark.parametrize("enum, table", [("GRANULARITY_", "TABLE_GRANULARITY")])
def test_enum_constants_match_the_name_tables(header, enum, table):
    """FP4SWIFT_GRANULARITY_ROW indexes "row" in fp4swift_name(FP4SWIFT_TABLE_GRANULARITY, .)."""
    names = _native.names(getattr(_native, table))
    consts = {n[len(PREFIX + enum):].lower(): v for n, v in header.defines.items() if n.startswith(PREFIX + enum)}
    assert consts and all(names[v] == n for n, v in consts.items()), (consts, names)


def test_quantizer_uses_the_header_constants():
    """QuantizerSpec.to_c writes the header's constants, not positions in Python lists."""
    import fp4swift as f4

    for nonfinite, code in (("propagate", _native.NONFINITE_PROPAGATE), ("raise", _native.NONFINITE_RAISE)):
        assert f4.QuantizerSpec.make(nonfinite=nonfinite).to_c().nonfinite == code
    for gran, code in (("tensor", _native.GRANULARITY_TENSOR), ("row", _native.GRANULARITY_ROW),
                       ("column", _native.GRANULARITY_COLUMN), ("block(32)", _native.GRANULARITY_BLOCK),
                       ("block2d(16)", _native.GRANULARITY_BLOCK2D)):
        assert f4.QuantizerSpec.make(granularity=gran).to_c().granularity == code


# ---------------------------------------------------------------------------------------
# The checkers catch broken mirrors


def _replace_first(types: List[Any], old: Any, new: Any) -> List[Any]:
    i = types.index(old)
    return types[:i] + [new] + types[i + 1:]


def test_checker_catches_a_wrong_integer_width(header):
    sig = dict(_native.SIGNATURES)
    res, args = sig["fp4swift_encode"]
    sig["fp4swift_encode"] = (res, _replace_first(list(args), ctypes.c_int64, ctypes.c_int32))  # n: int64_t
    problems = function_problems(header, sig, _native.STRUCTS)
    assert problems == ["fp4swift_encode: argument 1 (n) is c_int32, the header says int64_t -> c_int64"], problems


def test_checker_catches_a_wrong_pointer_and_restype(header):
    sig = dict(_native.SIGNATURES)
    res, args = sig["fp4swift_occ_clamp"]
    sig["fp4swift_occ_clamp"] = (ctypes.c_int64, _replace_first(list(args), _native.i32p, _native.i64p))
    problems = function_problems(header, sig, _native.STRUCTS)
    assert any("restype" in p for p in problems) and any("argument 7 (indices)" in p for p in problems), problems


def test_checker_catches_a_missing_binding_and_an_argument_too_many(header):
    sig = dict(_native.SIGNATURES)
    del sig["fp4swift_hadamard"]
    res, args = sig["fp4swift_decode"]
    sig["fp4swift_decode"] = (res, list(args) + [ctypes.c_int32])
    problems = function_problems(header, sig, _native.STRUCTS)
    assert any(p.startswith("fp4swift_hadamard: declared in fp4swift.h, no binding") for p in problems), problems
    assert any(p.startswith("fp4swift_decode: 5 argtypes") for p in problems), problems


def test_checker_catches_a_swapped_field_and_a_wrong_field_type(header):
    fields = list(_native.LinearSaved._fields_)
    fields[0], fields[1] = fields[1], fields[0]
    swapped = type("Swapped", (ctypes.Structure,), {"_fields_": fields})
    problems = struct_problems("fp4swift_linear_saved", swapped, header, _native.STRUCTS)
    assert any("fields" in p for p in problems) and any("offset" in p for p in problems), problems

    fields = [(n, ctypes.c_int32 if n == "x_codes_len" else t) for n, t in _native.LinearSaved._fields_]
    narrow = type("Narrow", (ctypes.Structure,), {"_fields_": fields})
    problems = struct_problems("fp4swift_linear_saved", narrow, header, _native.STRUCTS)
    assert "fp4swift_linear_saved.x_codes_len: c_int32 in _native, int64_t -> c_int64 in the header" in problems
    assert "fp4swift_linear_saved.x_codes_len: offset 8 size 4 in _native, offset 8 size 8 in C" in problems


def test_checker_catches_a_packed_struct(header):
    packed = type("Packed", (ctypes.Structure,), {"_pack_": 1, "_fields_": list(_native.LinearRecipe._fields_)})
    problems = struct_problems("fp4swift_linear_recipe", packed, header, _native.STRUCTS)
    assert any("occ_alpha: offset" in p for p in problems), problems
