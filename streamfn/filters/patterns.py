"""EventBridge event patterns, the syntax of Lambda's filter criteria, compiled once into plain Python checks.

Lambda "uses the same syntax as EventBridge" for filter patterns, and EventBridge's engine is AWS's open-source
Event Ruler (github.com/aws/event-ruler). This module follows Ruler's rule compiler: what it rejects is rejected
here with the same reason (its wording where it is clear), and what it accepts matches the same events, except:
numbers compare as Python floats and ints (Ruler: 6 decimals, within +-5e9); `"$or"` is always the operator
(Ruler keeps a legacy reading as a field name); a string value is never read as an IP address (Ruler matches
`["10.0.0.1"]` against other spellings of that address); wildcard "complexity" limits are not enforced.

A pattern becomes nested closures at start-up, so matching a record is only dict lookups, `isinstance` tests and
comparisons: no pattern is walked, no regex built and no JSON parsed per record. Semantics:

- fields of one object are ANDed; the values listed for a field are ORed; `"$or": [{...}, {...}]` ORs objects;
- a field whose value in the event is an array matches if any element matches (EventBridge's array rule); a
  nested pattern applied to an array of objects must match within one element;
- comparisons apply to leaves only: a field holding an object is an intermediate node, and for `exists` it is
  absent, as Ruler's "exists only works on the leaf nodes";
- a field the event lacks matches only `{"exists": false}` (`anything-but` included: it needs a value).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, TypeVar

import orjson


class _Missing(enum.Enum):
    MISSING = "MISSING"


MISSING: Final = _Missing.MISSING
"""A field the event does not have; distinct from a JSON null, which `[null]` matches."""

Check = Callable[[Mapping[str, Any]], bool]
"""A compiled pattern object, applied to one event node."""
Test = Callable[[Any], bool]
"""A compiled condition, applied to one leaf value."""
TopLevel = Callable[[str, bool], str]
"""How the event names its top-level fields: (pattern field, is compared as a leaf) -> key of the top-level node.
Raises PatternError for a field the event can never have."""
Leaf = tuple[Test, bool, bool]
"""A field's list of values: (test of one leaf value, result for a present field, result for an absent one)."""
T = TypeVar("T")

OPERATORS: Final = frozenset(
    {"prefix", "suffix", "equals-ignore-case", "wildcard", "anything-but", "numeric", "exists", "cidr"}
)
COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
NUMBERS: Final = frozenset({int, float})
"""The types of JSON numbers; bool is not one, though Python's True == 1."""
EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
"""What a nested pattern sees where the event has no object: every field absent."""


class PatternError(ValueError):
    """Why a pattern is invalid, and where in it (the path of field names)."""

    def __init__(self, reason: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


def parse_pattern(pattern: str | Mapping[str, Any], max_chars: int) -> tuple[dict[str, Any], str]:
    """The pattern as JSON data, and as its JSON text (at most `max_chars` long). A JSON text is parsed (duplicate
    keys: the last wins, as EventBridge); a dict is taken through its JSON text, so that what is accepted is exactly
    what that text would be (tuples become arrays, keys must be strings)."""
    try:
        text = pattern if isinstance(pattern, str) else orjson.dumps(pattern).decode()
        if len(text) > max_chars:
            raise PatternError(f"the pattern is {len(text)} characters long; at most {max_chars} allowed")
        data = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError) as error:
        raise PatternError(f"Filter is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise PatternError("Filter is not an object")
    return data, text


def compile_pattern(pattern: dict[str, Any], top_level: TopLevel) -> Check:
    """One pattern as a check of an event's top-level node.

    The top-level node is read with `node[key]` and must give MISSING (never raise) for a field the event lacks,
    so it can compute its fields on first access (a dict with `__missing__`): a record's value is then parsed only
    when a pattern reaches it. Nested nodes are the event's own dicts."""
    return _object(pattern, (), top_level, in_or=False)


def _object(pattern: dict[str, Any], path: tuple[str, ...], top_level: TopLevel | None, in_or: bool) -> Check:
    if not pattern:
        raise PatternError("Empty objects are not allowed", path)
    checks: list[Check] = []
    for name, rule in pattern.items():
        if name == "$or":
            checks.append(_or(rule, path, top_level))
            continue
        where = (*path, name)
        if in_or and name in OPERATORS:
            raise PatternError(f"{name!r} is an operator and cannot be a field name inside $or", where)
        if isinstance(rule, dict):
            inner = _object(rule, where, None, in_or)
            key = name if top_level is None else top_level(name, False)
            checks.append(_nested(key, inner, lazy=top_level is not None))
        elif isinstance(rule, list):
            leaf = _leaf(rule, where)
            key = name if top_level is None else top_level(name, True)
            checks.append(_field(key, leaf, lazy=top_level is not None))
        else:
            raise PatternError(f'"{name}" must be an object or an array', where)
    return all_of(checks)


def _or(rule: Any, path: tuple[str, ...], top_level: TopLevel | None) -> Check:
    where = (*path, "$or")
    if not isinstance(rule, list):
        raise PatternError("$or must be an array of objects", where)
    if len(rule) < 2:
        raise PatternError("$or needs at least 2 objects", where)
    branches: list[Check] = []
    for branch in rule:
        if not isinstance(branch, dict):
            raise PatternError("Only JSON objects are allowed in a $or array", where)
        branches.append(_object(branch, path, top_level, in_or=True))
    return any_of(branches)


def all_of(checks: Sequence[Callable[[T], bool]]) -> Callable[[T], bool]:
    """The conjunction as chained closures: cheaper per call than a loop or `all()` over a generator."""
    return functools.reduce(lambda first, second: lambda item: first(item) and second(item), checks)


def any_of(checks: Sequence[Callable[[T], bool]]) -> Callable[[T], bool]:
    """The disjunction as chained closures (see all_of)."""
    return functools.reduce(lambda first, second: lambda item: first(item) or second(item), checks)


def _flat(items: list[Any]) -> Iterator[Any]:
    """An event array's elements, nested arrays flattened (Ruler "crushes out" array structure)."""
    for item in items:
        if isinstance(item, list):
            yield from _flat(item)
        else:
            yield item


def _nested(key: str, inner: Check, *, lazy: bool) -> Check:
    """A field matched by a nested pattern. `lazy`: read the top-level node with `node[key]` (see compile_pattern).
    Each check reads its own field rather than wrapping a test of the value: the Python call saved per field is
    about a tenth of a simple match."""

    def check(node: Mapping[str, Any]) -> bool:
        child = node[key] if lazy else node.get(key, MISSING)
        if isinstance(child, dict):
            return inner(child)
        if isinstance(child, list):
            objects = [item for item in _flat(child) if isinstance(item, dict)]
            if objects:
                return any(inner(item) for item in objects)
        return inner(EMPTY)

    return check


def _field(key: str, leaf: Leaf, *, lazy: bool) -> Check:
    """A field matched by a list of values (see _nested)."""
    matches, if_present, if_absent = leaf

    def check(node: Mapping[str, Any]) -> bool:
        value = node[key] if lazy else node.get(key, MISSING)
        if value is MISSING or isinstance(value, dict):
            return if_absent
        if isinstance(value, list):
            leaves = [item for item in _flat(value) if not isinstance(item, dict)]
            if not leaves:
                return if_absent
            return if_present or any(matches(item) for item in leaves)
        return if_present or matches(value)

    return check


def _leaf(rule: list[Any], where: tuple[str, ...]) -> Leaf:
    """The values listed for one field (ORed): the test of one leaf value, and the results for a present field
    (True with {"exists": true}, else each leaf is tested) and for an absent one ({"exists": false})."""
    if not rule:
        raise PatternError("Empty arrays are not allowed", where)
    if_present = if_absent = False
    strings: set[str] = set()
    numbers: set[int | float] = set()
    constants: list[bool | None] = []
    tests: list[Test] = []
    for item in rule:
        if isinstance(item, dict):
            name, argument = _single(item, where)
            if name == "exists":
                if not isinstance(argument, bool):
                    raise PatternError("exists match pattern must be either true or false.", where)
                if_present, if_absent = if_present or argument, if_absent or not argument
            elif name in MATCHERS:
                tests.append(MATCHERS[name](argument, where))
            else:
                raise PatternError(f"Unrecognized match type {name}", where)
        elif isinstance(item, str):
            strings.add(item)
        elif is_number(item):
            numbers.add(item)
        elif item is None or isinstance(item, bool):
            constants.append(item)
        else:
            raise PatternError("Match value must be String, number, true, false, or null", where)
    if strings:
        tests.append(lambda value: isinstance(value, str) and value in strings)
    if numbers:
        # Numbers are equal by value (300 matches 300.0), as Ruler's compiler adds a numeric-equals matcher for
        # every number; bools are never numbers (True == 1 in Python, not in JSON).
        tests.append(lambda value: type(value) in NUMBERS and value in numbers)
    if constants:
        tests.append(lambda value: any(value is constant for constant in constants))
    return _any_value(tests), if_present, if_absent


def _any_value(tests: list[Test]) -> Test:
    return any_of(tests) if tests else lambda value: False


def is_number(value: Any) -> bool:
    """A JSON number: int or float, never a bool (hot paths test `type(value) in NUMBERS` inline)."""
    return type(value) in NUMBERS


def _single(expression: dict[str, Any], where: tuple[str, ...]) -> tuple[str, Any]:
    if not expression:
        raise PatternError("Match expression name not found", where)
    if len(expression) > 1:
        raise PatternError("Only one key allowed in match expression", where)
    ((name, argument),) = expression.items()
    return name, argument


def _affix(name: str) -> Callable[[Any, tuple[str, ...]], Test]:
    """prefix / suffix: a string, or {"equals-ignore-case": string}."""
    method = str.startswith if name == "prefix" else str.endswith

    def compile_affix(argument: Any, where: tuple[str, ...]) -> Test:
        if isinstance(argument, dict):
            option, text = _single(argument, where)
            if option != "equals-ignore-case":
                raise PatternError(f"Unsupported {name} pattern: {option}", where)
            if not isinstance(text, str):
                raise PatternError("equals-ignore-case match pattern must be a string", where)
            lowered = text.lower()
            return lambda value: isinstance(value, str) and method(value.lower(), lowered)
        if not isinstance(argument, str):
            raise PatternError(f"{name} match pattern must be a string", where)
        return lambda value: isinstance(value, str) and method(value, argument)

    return compile_affix


def _equals_ignore_case(argument: Any, where: tuple[str, ...]) -> Test:
    if not isinstance(argument, str):
        raise PatternError("equals-ignore-case match pattern must be a string", where)
    lowered = argument.lower()
    return lambda value: isinstance(value, str) and value.lower() == lowered


def _wildcard(argument: Any, where: tuple[str, ...]) -> Test:
    if not isinstance(argument, str):
        raise PatternError("wildcard match pattern must be a string", where)
    regex = wildcard_regex([argument], where)
    return lambda value: isinstance(value, str) and regex.fullmatch(value) is not None


def wildcard_regex(patterns: list[str], where: tuple[str, ...] = ()) -> re.Pattern[str]:
    """One regex matching any of the wildcard patterns: `*` is any run of characters (none included), `\\*` an
    asterisk, `\\\\` a backslash; other escapes and `**` are errors (Ruler's rules, its positions are 1-based)."""
    alternatives = []
    for pattern in patterns:
        parts: list[str] = []
        literal: list[str] = []
        index = 0
        while index < len(pattern):
            char = pattern[index]
            if char == "*":
                if pattern[index + 1 : index + 2] == "*":
                    raise PatternError(f"Consecutive wildcard characters at pos {index + 1}", where)
                parts += [re.escape("".join(literal)), ".*"]
                literal = []
            elif char == "\\":
                escaped = pattern[index + 1 : index + 2]
                if escaped not in ("*", "\\"):
                    raise PatternError(f"Invalid escape character at pos {index + 1}", where)
                literal.append(escaped)
                index += 1
            else:
                literal.append(char)
            index += 1
        parts.append(re.escape("".join(literal)))
        alternatives.append("".join(parts))
    return re.compile("|".join(f"(?:{alternative})" for alternative in alternatives), re.DOTALL)


def _numeric(argument: Any, where: tuple[str, ...]) -> Test:
    """["=", n], ["<" or "<=", n], [">" or ">=", n] optionally followed by "<" or "<=" and a larger n."""
    if not isinstance(argument, list):
        raise PatternError("Value of numeric must be an array.", where)
    if not argument or not isinstance(argument[0], str):
        raise PatternError(f"Invalid member in numeric match: {_json(argument[0]) if argument else ']'}", where)
    first = argument[0]
    if first not in COMPARISONS:
        raise PatternError(f"Unrecognized numeric range operator: {first}", where)
    bottom = _bound(first, argument[1:2], where)
    rest = argument[2:]
    compare = COMPARISONS[first]
    if not rest:
        return lambda value: type(value) in NUMBERS and compare(value, bottom)
    if first not in (">", ">="):
        raise PatternError("Too many elements in numeric expression", where)
    second = rest[0]
    if not isinstance(second, str):
        raise PatternError(f"Bad value in numeric range: {_json(second)}", where)
    if second not in ("<", "<="):
        raise PatternError(f"Bad numeric range operator: {second}", where)
    top = _bound(second, rest[1:2], where)
    if len(rest) > 2:
        raise PatternError("Too many terms in numeric range expression", where)
    if top <= bottom:
        raise PatternError("Bottom must be less than top", where)
    compare_top = COMPARISONS[second]
    return lambda value: type(value) in NUMBERS and compare(value, bottom) and compare_top(value, top)


def _bound(operator_name: str, candidates: list[Any], where: tuple[str, ...]) -> int | float:
    if not candidates or not is_number(candidates[0]):
        raise PatternError(f"Value of {'equals' if operator_name == '=' else operator_name} must be numeric", where)
    bound: int | float = candidates[0]
    return bound


def _cidr(argument: Any, where: tuple[str, ...]) -> Test:
    if not isinstance(argument, str):
        raise PatternError("cidr match pattern must be a string", where)
    if argument.count("/") != 1:
        raise PatternError("Malformed CIDR, one '/' required", where)
    if not argument.partition("/")[2].isdigit():
        raise PatternError("Malformed CIDR, mask bits must be an integer", where)
    try:
        network = ipaddress.ip_network(argument, strict=False)
    except ValueError as error:
        raise PatternError(f"Malformed CIDR ({error})", where) from None

    def in_network(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            return ipaddress.ip_address(value) in network
        except ValueError:
            return False

    return in_network


def _anything_but(argument: Any, where: tuple[str, ...]) -> Test:
    """Matches a present value that is not excluded. Excluding strings (by prefix, suffix, case or wildcard too)
    never excludes a number, null or bool, and excluding numbers never excludes a string: those match."""
    if isinstance(argument, dict):
        name, values = _single(argument, where)
        excluded = _excluded_strings(name, values, where)
        return lambda value: not (isinstance(value, str) and excluded(value))
    values = argument if isinstance(argument, list) else [argument]
    if not values:
        raise PatternError("Empty arrays are not allowed", where)
    if all(isinstance(value, str) for value in values):
        strings = frozenset(values)
        return lambda value: not (isinstance(value, str) and value in strings)
    if all(is_number(value) for value in values):
        numbers = frozenset(values)
        return lambda value: not (type(value) in NUMBERS and value in numbers)
    if isinstance(argument, list):
        raise PatternError("Inside anything-but list, either all values are numbers or all are strings", where)
    raise PatternError("Value of anything-but must be an array or single string/number value.", where)


def _excluded_strings(name: str, values: Any, where: tuple[str, ...]) -> Callable[[str], bool]:
    """anything-but's {"prefix" | "suffix" | "equals-ignore-case" | "wildcard": string or [strings]}."""
    if name not in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
        raise PatternError(f"Unsupported anything-but pattern: {name}", where)
    texts = values if isinstance(values, list) else [values]
    if not texts:
        raise PatternError("Empty arrays are not allowed", where)
    if not all(isinstance(text, str) for text in texts):
        raise PatternError(f"Inside anything-but/{name}, only strings are supported", where)
    if name in ("prefix", "suffix") and "" in texts:
        raise PatternError("Null prefix/suffix not allowed", where)
    affixes = tuple(texts)
    if name == "prefix":
        return lambda value: value.startswith(affixes)
    if name == "suffix":
        return lambda value: value.endswith(affixes)
    if name == "equals-ignore-case":
        lowered = frozenset(text.lower() for text in texts)
        return lambda value: value.lower() in lowered
    regex = wildcard_regex(texts, where)
    return lambda value: regex.fullmatch(value) is not None


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


MATCHERS: Final[dict[str, Callable[[Any, tuple[str, ...]], Test]]] = {
    "prefix": _affix("prefix"),
    "suffix": _affix("suffix"),
    "equals-ignore-case": _equals_ignore_case,
    "wildcard": _wildcard,
    "anything-but": _anything_but,
    "numeric": _numeric,
    "cidr": _cidr,
}
"""The comparison operators besides `exists` (which is about the field, not its value)."""
