"""Typed field tables for JSON request bodies: Docker's decoding rules, checked up front.

dockerd decodes a request body into Go structs with encoding/json, and that decoding is the
type check: `"Privileged": "false"` fails with

    json: cannot unmarshal string into Go struct field HostConfig.Privileged of type bool

and the request is answered 400 before anything exists. Python's json.loads gives us dicts of
anything, so the same rules are written down as tables and checked before a handler acts on a
body. What Go's decoder does, and so what a table entry means:

    BOOL      true / false only (not "false", not 0)
    STR       a string
    INT       an integer literal in int64 range (1.5 and 1.0 are refused: ParseInt fails)
    UINT, UINT16, UINT32   non-negative integers in range
    STRS      an array of strings
    STRSLICE  a string or an array of strings (Docker's strslice.StrSlice: Cmd, Entrypoint, ...)
    STRMAP    an object of string values (Labels, Sysctls, ...)
    SET       an object whose values are objects (Volumes, ExposedPorts: map[string]struct{})
    ANY       anything (a field the daemon does not interpret)
    {...}     a nested object with its own table;  [{...}] / [TYPE]: an array of those
    MapOf(t)  an object whose values all have type t

`null` is accepted everywhere (Go leaves the zero value), and so are unknown fields (Go ignores
them), exactly as dockerd does.
"""

from minidock import errors

BOOL, STR, INT, UINT, UINT16, UINT32 = "bool", "string", "int64", "uint64", "uint16", "uint32"
STRS, STRSLICE, STRMAP, SET, ANY = "[]string", "strslice", "map[string]string", "map[string]struct{}", "any"

_RANGES = {INT: (-(1 << 63), (1 << 63) - 1), UINT: (0, (1 << 64) - 1),
           UINT16: (0, (1 << 16) - 1), UINT32: (0, (1 << 32) - 1)}


class MapOf:
    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"map[string]{_type_name(self.value)}"


def _json_kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_name(t):
    if isinstance(t, dict):
        return "struct"
    if isinstance(t, list):
        return "[]" + _type_name(t[0])
    return str(t)


def _fail(value, where, t):
    shown = _json_kind(value)
    if shown == "number":
        shown = f"number {value}"
    raise errors.InvalidParameter(
        f"json: cannot unmarshal {shown} into Go struct field {where} of type {_type_name(t)}")


def check(value, table, where):
    """Raise InvalidParameter (Docker's wording) where `value` does not fit `table`."""
    if value is None:
        return
    if isinstance(table, dict):
        if not isinstance(value, dict):
            _fail(value, where, table)
        for key, sub in table.items():
            if key in value:
                check(value[key], sub, f"{where}.{key}")
        return
    if isinstance(table, list):
        if not isinstance(value, list):
            _fail(value, where, table)
        for item in value:
            check(item, table[0], where)
        return
    if isinstance(table, MapOf):
        if not isinstance(value, dict):
            _fail(value, where, table)
        for item in value.values():
            check(item, table.value, where)
        return
    if table == ANY:
        return
    if table == BOOL:
        if not isinstance(value, bool):
            _fail(value, where, table)
    elif table == STR:
        if not isinstance(value, str):
            _fail(value, where, table)
    elif table in _RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(value, where, table)
        low, high = _RANGES[table]
        if not low <= value <= high:
            raise errors.InvalidParameter(
                f"json: cannot unmarshal number {value} into Go struct field {where} of type {table}")
    elif table == STRS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            _fail(value, where, table)
    elif table == STRSLICE:
        if isinstance(value, str):
            return
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            _fail(value, where, table)
    elif table == STRMAP:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            _fail(value, where, table)
    elif table == SET:
        if not isinstance(value, dict) or not all(v is None or isinstance(v, dict) for v in value.values()):
            _fail(value, where, table)
    else:
        raise AssertionError(f"unknown type {table!r} in a field table")


def check_body(body, table, name):
    """The type check of a whole JSON body against `table` (`name`: its Go struct, for the
    message): 400 on the first misfit, before the handler acts on anything."""
    if not isinstance(body, dict):
        _fail(body, name, table)
    check(body, table, name)
