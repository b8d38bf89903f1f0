"""Dockerfiles: the classic (heredoc-free) syntax, parsed into stages, and Docker's variable rules.

A Dockerfile is a text file read line by line. This module turns it into data the builder walks;
it runs nothing. What the format is, in the order the parser meets it:

1. **Parser directives.** Lines at the very top shaped `# name=value` (case-insensitive name, spaces
   allowed around `=`). Two are known: `escape` (the escape character, `\\` or a backtick, used for
   line continuations and in variable substitution) and `syntax` (a BuildKit frontend image; the
   classic builder records and ignores it). The first line that is not a known directive -- a
   blank line, an ordinary comment, an unknown directive, an instruction -- ends the directives;
   after that, `# escape=` is just a comment. A directive may appear once.

2. **Comments and continuations.** A line whose first non-blank character is `#` is a comment. A
   line ending in the escape character (optionally followed by blanks) continues on the next line;
   comment lines inside a continuation are dropped, and blank ones are dropped with a warning
   ("Empty continuation line found in: ..."). Continuation lines keep their leading blanks, so
   `RUN a \\` + `    b` joins into `RUN a     b`. That joined text is the instruction's
   `original`, printed in `Step N/M : <original>`.

3. **The instruction line.** `KEYWORD [--flag=value ...] arguments`. The keyword is
   case-insensitive. Flags are the leading words that start with `--`. How the rest is split
   depends on the keyword:

   | keyword                         | arguments become                                           |
   |---------------------------------|------------------------------------------------------------|
   | RUN CMD ENTRYPOINT SHELL        | a JSON array of strings (exec form, `json=True`), else one  |
   |                                 | string run by the shell (shell form)                        |
   | COPY ADD VOLUME                 | a JSON array, else whitespace-separated words               |
   | FROM EXPOSE                     | whitespace-separated words                                  |
   | ENV LABEL                       | `k=v k2="v 2"` pairs (quotes kept until substitution), or   |
   |                                 | the legacy `ENV k rest of line`                             |
   | ARG                             | `name` or `name=default` words                              |
   | USER WORKDIR STOPSIGNAL         | the rest of the line, one string                            |
   | MAINTAINER                      |                                                             |
   | HEALTHCHECK                     | `NONE`, or `CMD` followed by exec or shell form              |
   | ONBUILD                         | another instruction (not ONBUILD, FROM or MAINTAINER)       |

4. **Stages.** `FROM image [AS name]` starts a stage; every later instruction belongs to it. `ARG`
   lines before the first FROM are *meta args*: visible only to FROM lines (and to a stage that
   redeclares them with a bare `ARG name`). Anything else before FROM is an error.

5. **Variable substitution** and ARG/ENV scoping are buildvars.py's.

The data handed to the builder:

    Dockerfile(escape, syntax, meta_args=[Instruction ARG...], stages=[Stage...], warnings=[...])
    Stage(index, name, from_=Instruction FROM, instructions=[Instruction...])
    Instruction(cmd, args, flags, json, original, line, end_line, pairs, trigger)

`cmd` is the upper-case keyword. `args` by keyword:

    FROM         [image]                      (stage name lives on Stage.name; --platform in flags;
                 a FROM given to parse_instruction() alone keeps it as pairs=[("as", name)])
    RUN CMD ENTRYPOINT   exec form: the argv; shell form: [command string]; `command_argv()` joins
                 the shell in. Empty CMD/ENTRYPOINT give [].
    SHELL        the argv (JSON form is required)
    ENV LABEL    [k1, v1, k2, v2, ...]        and pairs = [(k1, v1), ...]
    ARG          [name or name=value, ...]    and pairs = [(name, value or None), ...]
    EXPOSE       [port, ...]  (sorted, as Docker does)
    VOLUME       [path, ...]
    COPY ADD     [src, ..., dest]             flags: chown, chmod, from (COPY), link, checksum (ADD)
    USER WORKDIR STOPSIGNAL MAINTAINER        [value]
    HEALTHCHECK  ["NONE"] | ["CMD", argv...] | ["CMD-SHELL", command]; flags: interval, timeout,
                 start-period, start-interval, retries; `healthcheck_config()` gives the JSON.
    ONBUILD      [expression]  (the text after ONBUILD, stored in the image's OnBuild list);
                 `trigger` is that expression parsed as an Instruction.

Every error is `errors.InvalidParameter` carrying Docker's wording, prefixed with
`Dockerfile parse error line N: ` when it belongs to a line.
"""

import dataclasses
import json
import re

from minidock import errors, times


DEFAULT_SHELL = ["/bin/sh", "-c"]

# Flags each instruction accepts: name -> "bool" or "string". Anything else is "Unknown flag".
FLAGS = {
    "FROM": {"platform": "string"},
    "COPY": {"chown": "string", "chmod": "string", "from": "string", "link": "bool"},
    "ADD": {"chown": "string", "chmod": "string", "link": "bool", "keep-git-dir": "bool",
            "checksum": "string"},
    "HEALTHCHECK": {"interval": "string", "timeout": "string", "start-period": "string",
                    "start-interval": "string", "retries": "string"},
}

INSTRUCTIONS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM",
                "HEALTHCHECK", "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL",
                "USER", "VOLUME", "WORKDIR")

_DIRECTIVE = re.compile(r"^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$")
_KNOWN_DIRECTIVES = ("escape", "syntax")
_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
_ONBUILD_PREFIX = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)


@dataclasses.dataclass
class Instruction:
    """One instruction, as written (before substitution). See the module docstring for `args`."""
    cmd: str                                   # upper-case keyword: "RUN", "COPY", ...
    args: list
    flags: dict = dataclasses.field(default_factory=dict)   # {"from": "build", "link": "true"}
    json: bool = False                         # exec (JSON array) form
    original: str = ""                         # the joined source text, for `Step N/M : ...`
    line: int = 0                              # first line (1-based) in the Dockerfile
    end_line: int = 0                          # last line, after continuations
    pairs: list = None                         # ENV/LABEL/ARG: [(key, value-or-None), ...]
    trigger: "Instruction" = None              # ONBUILD: the wrapped instruction

    def __str__(self):
        return self.original


@dataclasses.dataclass
class Stage:
    """A build stage: its FROM instruction and what follows up to the next FROM."""
    index: int
    name: str                                  # lower-cased `AS name`, or None
    from_: Instruction
    instructions: list

    @property
    def base(self):
        """The base image reference as written (may contain $VARS; see `substitute`)."""
        return self.from_.args[0]


@dataclasses.dataclass
class Dockerfile:
    escape: str                                # "\\" or "`"
    syntax: str                                # the `# syntax=` directive, or None
    meta_args: list                            # ARG instructions before the first FROM
    stages: list
    warnings: list                             # lines the builder should print to the client

    def steps(self):
        """Every instruction in `Step N/M` order: meta ARGs, then each FROM and its stage."""
        out = list(self.meta_args)
        for stage in self.stages:
            out.append(stage.from_)
            out.extend(stage.instructions)
        return out

    def stage(self, ref):
        """The stage named `ref` (case-insensitive) or with that index; None if there is none.
        This is how `COPY --from=<ref>` and a later `FROM <ref>` find an earlier stage."""
        for stage in self.stages:
            if stage.name is not None and stage.name == str(ref).lower():
                return stage
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            index = int(ref)
            if 0 <= index < len(self.stages):
                return self.stages[index]
        return None


def parse_error(message, line=None):
    """An InvalidParameter with Docker's `Dockerfile parse error line N: ` prefix."""
    if line is not None:
        message = f"Dockerfile parse error line {line}: {message}"
    err = errors.InvalidParameter(message)
    err.line = line
    return err


# ---------------------------------------------------------------------------------------------
# Reading lines: directives, comments, continuations
# ---------------------------------------------------------------------------------------------

def _logical_lines(text):
    """Yield (start_line, end_line, joined_text) per instruction and return directives/warnings.

    Mirrors the reference parser: the first physical line of an instruction has its leading
    blanks stripped, continuation lines keep theirs; the continuation marker is the escape
    character followed by optional blanks at the end of a line.
    """
    escape = "\\"
    syntax = None
    seen = set()
    directives_done = False
    continuation = re.compile(re.escape(escape) + r"[ \t]*$")
    warnings = []
    out = []

    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()                            # a final newline does not start another line
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    i = 0

    def directive(raw, number):
        # Directives are only looked for until the first line that is not one.
        nonlocal directives_done, escape, syntax, continuation
        if directives_done:
            return
        match = _DIRECTIVE.match(raw)
        if not match or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            directives_done = True
            return
        name, value = match.group(1).lower(), match.group(2)
        if name in seen:
            raise parse_error(f"only one {name} parser directive can be used", number)
        seen.add(name)
        if name == "escape":
            if value not in ("\\", "`"):
                raise parse_error(f"invalid escape token '{value}' does not match ` or \\", number)
            escape = value
            continuation = re.compile(re.escape(escape) + r"[ \t]*$")
        else:
            syntax = value

    while i < len(lines):
        raw = lines[i].lstrip()
        i += 1
        start = i
        directive(raw, start)
        if raw.startswith("#"):
            continue                           # a comment (or a directive) on its own
        joined, ended = _trim_continuation(raw, continuation)
        if ended and joined == "":
            continue                           # blank line
        empty_continuation = False
        while not ended and i < len(lines):
            raw = lines[i]
            i += 1
            directive(raw, i)
            if raw.lstrip().startswith("#"):
                continue                       # comment lines inside a continuation vanish
            if raw.strip() == "":
                empty_continuation = True      # accepted, with Docker's warning
                continue
            piece, ended = _trim_continuation(raw, continuation)
            joined += piece
        if empty_continuation:
            warnings.append("[WARNING]: Empty continuation line found in:\n    " + joined)
        out.append((start, i, joined))
    if warnings:
        warnings.append("[WARNING]: Empty continuation lines will become errors in a future "
                        "release.")
    return out, escape, syntax, warnings


def _trim_continuation(line, continuation):
    if continuation.search(line):
        return continuation.sub("", line), False
    return line, True


# ---------------------------------------------------------------------------------------------
# One instruction line -> Instruction
# ---------------------------------------------------------------------------------------------

def _split_command(line):
    """`KEYWORD --flags rest` -> (keyword as written, [flag words], rest)."""
    parts = _WHITESPACE.split(line.strip(), 1)
    keyword = parts[0]
    if len(parts) == 1:
        return keyword, [], ""
    flags, rest = _extract_flags(parts[1])
    return keyword, flags, rest.strip()


def _extract_flags(text):
    """Leading `--name[=value]` words (quotes and backslashes honoured inside them)."""
    flags = []
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if not text.startswith("--", pos):
            return flags, text[pos:]
        word = []
        quote = None
        while pos < n:
            ch = text[pos]
            if quote:
                if ch == quote:
                    quote = None
                elif ch == "\\" and pos + 1 < n:
                    pos += 1
                    word.append(text[pos])
                else:
                    word.append(ch)
            elif ch.isspace():
                break
            elif ch in "'\"":
                quote = ch
            elif ch == "\\" and pos + 1 < n:
                pos += 1
                word.append(text[pos])
            else:
                word.append(ch)
            pos += 1
        word = "".join(word)
        if word == "--":
            return flags, text[pos:]           # `--` ends the flags explicitly
        flags.append(word)


def _parse_flags(cmd, words, line):
    """Validate flag words against FLAGS[cmd]; -> {name: value}, bools as "true"/"false"."""
    known = FLAGS.get(cmd, {})
    values = {}
    for word in words:
        name, eq, value = word[2:].partition("=")
        kind = known.get(name)
        if kind is None:
            raise parse_error(f"Unknown flag: {name}", line)
        if name in values:
            raise parse_error(f"Duplicate flag specified: {name}", line)
        if kind == "bool":
            if eq and value == "":
                raise parse_error(f"Missing a value on flag: {name}", line)
            if value.lower() not in ("", "true", "false"):
                raise parse_error(f"Expecting boolean value for flag {name}, not: {value}", line)
            values[name] = value.lower() or "true"
        else:
            if not eq:
                raise parse_error(f"Missing a value on flag: {name}", line)
            values[name] = value
    return values


def _parse_json(rest):
    """A JSON array of strings, or None if `rest` is not JSON. Non-string items are an error."""
    text = rest.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None                            # Docker falls back to the shell form
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise ValueError("when using JSON array syntax, arrays must be comprised of strings only")
    return value


def _parse_words(rest, escape):
    """Split on unquoted whitespace, keeping quotes and escapes (substitution removes them)."""
    words = []
    word = []
    in_word = False
    blank_ok = False
    quote = None
    pos = 0
    n = len(rest)
    while pos < n:
        ch = rest[pos]
        if quote is None:
            if ch.isspace():
                if in_word and (blank_ok or word):
                    words.append("".join(word))
                word, in_word, blank_ok = [], False, False
                pos += 1
                continue
            in_word = True
            if ch in "'\"":
                quote, blank_ok = ch, True
            elif ch == escape:
                if pos + 1 == n:
                    pos += 1                   # a lone escape at the end is dropped
                    continue
                word.append(ch)
                pos += 1
                ch = rest[pos]
            word.append(ch)
        else:
            if ch == quote:
                quote = None
            elif ch == escape and quote != "'":
                if pos + 1 == n:
                    pos += 1
                    continue
                word.append(ch)
                pos += 1
                ch = rest[pos]
            word.append(ch)
        pos += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def _name_values(cmd, rest, escape, line):
    """ENV and LABEL: `k=v k2="v 2"` or the legacy `k value with spaces`."""
    words = _parse_words(rest, escape)
    if not words:
        raise parse_error(f"{cmd} requires at least one argument", line)
    if "=" not in words[0]:
        parts = _WHITESPACE.split(rest, 1)
        if len(parts) < 2:
            raise parse_error(f"{cmd} must have two arguments", line)
        pairs = [(parts[0], parts[1])]
    else:
        pairs = []
        for word in words:
            if "=" not in word:
                raise parse_error(f"Syntax error - can't find = in {json.dumps(word)}. "
                            "Must be of the form: name=value", line)
            key, _, value = word.partition("=")
            pairs.append((key, value))
    for key, _ in pairs:
        if key == "":
            raise parse_error(f"{cmd} names can not be blank", line)
    return pairs


def _healthcheck(rest, escape, flag_words, line):
    parts = rest.split(None, 1)
    if not parts:
        raise parse_error("HEALTHCHECK requires at least one argument", line)
    kind = parts[0].upper()
    tail = parts[1] if len(parts) > 1 else ""
    if kind == "NONE":
        if tail.strip():
            raise parse_error("HEALTHCHECK NONE takes no arguments", line)
        return ["NONE"], _parse_flags("HEALTHCHECK", flag_words, line), False
    flags = _parse_flags("HEALTHCHECK", flag_words, line)
    if kind != "CMD":
        raise parse_error(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)', line)
    argv = _maybe_json(tail, line)
    if argv is None:
        args, is_json = ([tail] if tail else []), False
    else:
        args, is_json = argv, True
    if not args:
        raise parse_error("Missing command after HEALTHCHECK CMD", line)
    for name in ("interval", "timeout", "start-period", "start-interval"):
        if flags.get(name):
            try:
                ns = times.parse_duration(flags[name])
            except ValueError as exc:
                raise parse_error(str(exc), line) from None
            if 0 < ns < 10**6 or ns < 0:
                raise parse_error(f'Interval "{name}" cannot be less than 1ms', line)
    if flags.get("retries"):
        try:
            retries = int(flags["retries"])
        except ValueError:
            raise parse_error(f'strconv.ParseInt: parsing "{flags["retries"]}": invalid syntax',
                        line) from None
        if retries < 0:
            raise parse_error(f"--retries cannot be negative ({retries})", line)
    return (["CMD"] if is_json else ["CMD-SHELL"]) + args, flags, is_json


def _maybe_json(rest, line):
    try:
        return _parse_json(rest)
    except ValueError as exc:
        raise parse_error(str(exc), line) from None


def parse_instruction(text, escape="\\", line=1, end_line=None):
    """Parse one (already joined) instruction line into an Instruction.

    Exposed for ONBUILD triggers stored in a base image: the builder parses each stored
    expression with this when a FROM picks that image up.
    """
    end_line = end_line or line
    keyword, flag_words, rest = _split_command(text)
    cmd = keyword.upper()
    if cmd not in INSTRUCTIONS:
        raise parse_error(f"unknown instruction: {cmd}", line)
    instr = Instruction(cmd=cmd, args=[], original=text.strip(), line=line, end_line=end_line)
    if cmd not in FLAGS and cmd != "ONBUILD":
        _parse_flags(cmd, flag_words, line)    # rejects any flag with Docker's message

    if cmd in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
        argv = _maybe_json(rest, line)
        if argv is not None:
            instr.args, instr.json = argv, True
        else:
            instr.args = [rest] if rest else []
        if cmd == "SHELL":
            if not instr.args:
                raise parse_error("SHELL requires at least one argument", line)
            if not instr.json:
                raise parse_error("SHELL requires the arguments to be in JSON form", line)
    elif cmd in ("COPY", "ADD", "VOLUME"):
        argv = _maybe_json(rest, line)
        if argv is not None:
            instr.args, instr.json = argv, True
        else:
            instr.args = _WHITESPACE.split(rest) if rest else []
        if cmd == "VOLUME":
            if not instr.args:
                raise parse_error("VOLUME requires at least one argument", line)
            if any(v.strip() == "" for v in instr.args):
                raise parse_error("VOLUME specified can not be an empty string", line)
            instr.args = [v.strip() for v in instr.args]
        else:
            if len(instr.args) < 2:
                raise parse_error(f"{cmd} requires at least two arguments, but only one was "
                            "provided. Destination could not be determined", line)
            instr.flags = _parse_flags(cmd, flag_words, line)
    elif cmd == "FROM":
        words = _WHITESPACE.split(rest) if rest else []
        if len(words) == 3 and words[1].lower() == "as":
            name = words[2].lower()
            if not _STAGE_NAME.match(name):
                raise parse_error(f'invalid name for build stage: "{words[2]}", name can\'t start '
                            "with a number or contain symbols", line)
            instr.pairs = [("as", name)]
        elif len(words) != 1:
            raise parse_error("FROM requires either one or three arguments", line)
        instr.args = words[:1]
        instr.flags = _parse_flags(cmd, flag_words, line)
    elif cmd == "EXPOSE":
        instr.args = sorted(_WHITESPACE.split(rest)) if rest else []
        if not instr.args:
            raise parse_error("EXPOSE requires at least one argument", line)
    elif cmd in ("ENV", "LABEL"):
        instr.pairs = _name_values(cmd, rest, escape, line)
        instr.args = [x for pair in instr.pairs for x in pair]
    elif cmd == "ARG":
        words = _parse_words(rest, escape)
        if not words:
            raise parse_error("ARG requires at least one argument", line)
        instr.pairs = []
        for word in words:
            if "=" in word:
                key, _, value = word.partition("=")
                if key == "":
                    raise parse_error("ARG names can not be blank", line)
                instr.pairs.append((key, value))
            else:
                instr.pairs.append((word, None))
        instr.args = words
    elif cmd in ("USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER"):
        if not rest:
            raise parse_error(f"{cmd} requires exactly one argument", line)
        instr.args = [rest]
    elif cmd == "HEALTHCHECK":
        instr.args, instr.flags, instr.json = _healthcheck(rest, escape, flag_words, line)
    elif cmd == "ONBUILD":
        _parse_flags(cmd, flag_words, line)
        if not rest:
            raise parse_error("ONBUILD requires at least one argument", line)
        inner = _WHITESPACE.split(rest, 1)[0].upper()
        if inner == "ONBUILD":
            raise parse_error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", line)
        if inner in ("MAINTAINER", "FROM"):
            raise parse_error(f"{inner} isn't allowed as an ONBUILD trigger", line)
        expression = _ONBUILD_PREFIX.sub("", instr.original)
        # Docker only checks the trigger's keyword here and finds other mistakes when a child
        # image runs it; parsing it fully now reports them where the author can fix them.
        instr.trigger = parse_instruction(expression, escape, line, end_line)
        instr.args = [expression]
    return instr


def parse(source):
    """Parse a whole Dockerfile (str or bytes) into a Dockerfile; InvalidParameter on error."""
    if isinstance(source, bytes):
        source = source.decode("utf-8", errors="replace")
    if source.startswith("\ufeff"):
        source = source[1:]                    # a UTF-8 byte-order mark on the first line
    lines, escape, syntax, warnings = _logical_lines(source)
    if not lines:
        raise parse_error("file with no instructions")

    meta_args, stages = [], []
    for start, end, text in lines:
        instr = parse_instruction(text, escape, start, end)
        if instr.cmd == "FROM":
            name = instr.pairs[0][1] if instr.pairs else None
            instr.pairs = None
            if name is not None and any(s.name == name for s in stages):
                raise parse_error(f'duplicate stage name "{name}"', start)
            stages.append(Stage(index=len(stages), name=name, from_=instr, instructions=[]))
        elif not stages:
            if instr.cmd != "ARG":
                raise parse_error("No build stage in current context")
            meta_args.append(instr)
        else:
            stages[-1].instructions.append(instr)
    return Dockerfile(escape=escape, syntax=syntax, meta_args=meta_args, stages=stages,
                      warnings=warnings)


def command_argv(instr, shell=None):
    """The argv a RUN/CMD/ENTRYPOINT (or HEALTHCHECK CMD-SHELL) stands for: the exec form as is,
    the shell form as `shell + [command]` (shell defaults to ["/bin/sh", "-c"], or what SHELL set).
    """
    if instr.json:
        return list(instr.args)
    if not instr.args:
        return []
    return list(shell or DEFAULT_SHELL) + [instr.args[-1]]


def healthcheck_config(instr):
    """HEALTHCHECK -> the image config's `Healthcheck` object (durations in nanoseconds)."""
    config = {"Test": list(instr.args)}
    if instr.args == ["NONE"]:
        return config
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        if instr.flags.get(flag):
            config[key] = times.parse_duration(instr.flags[flag])
    if instr.flags.get("retries"):
        config["Retries"] = int(instr.flags["retries"])
    return config
