"""Dockerfile variables: substitution in instruction arguments, and which variables are in scope.

Only ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR and ARG are expanded by the
builder (`substitute`, `expand_word`); RUN/CMD/ENTRYPOINT text is left for the shell in the
container. The rules are a small subset of sh: `$NAME`, `${NAME}`, `${NAME:-word}` (word if unset
or empty), `${NAME:+word}` (word if set and non-empty), the colon-less `-`/`+` forms (test "unset"
only), `${NAME:?msg}`; single quotes suppress expansion, double quotes don't (inside them the
escape character only escapes `"`, `$` and itself); the escape character outside quotes takes the
next character literally. Quotes are removed in the process. EXPOSE alone splits an expanded value
into several words.

Which variables a line sees is the other half (`BuildArgs`, `Scope`): `ARG` declares a build
argument for the rest of its stage (a `--build-arg` value overrides its default), `ENV` sets a
variable that also lands in the image, and ENV wins over ARG of the same name. Meta args (before
the first FROM) are visible only to FROM lines and to stages that redeclare them. The proxy
variables in BUILTIN_ARGS may be given without an ARG and are kept out of the image's history.

What you can observe: `docker build --build-arg V=x` with `ARG V` + `RUN echo $V`, and with
`LABEL l=${V:-none}` in `docker inspect -f '{{.Config.Labels}}'`.
"""

import dataclasses

from minidock import dockerfile, errors

# Instructions whose arguments the builder runs through variable substitution (Docker's
# replaceEnvAllowed plus FROM, which only sees the meta args). RUN, CMD, ENTRYPOINT, SHELL,
# HEALTHCHECK, MAINTAINER and ONBUILD are stored as written.
EXPANDED = frozenset({"ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL",
                      "USER", "VOLUME", "WORKDIR"})

# Build args any Dockerfile may use without declaring them with ARG. Docker keeps them out of
# the image history (they often hold credentials).
BUILTIN_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
                "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


# ---------------------------------------------------------------------------------------------
# Substitution
# ---------------------------------------------------------------------------------------------

class _Words:
    """Collects the words a substitution yields, splitting on unquoted (or expanded) blanks."""

    def __init__(self):
        self.word = ""
        self.words = []
        self.in_word = False

    def add_char(self, ch):
        if ch.isspace():
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word, self.in_word = "", False
        else:
            self.add_raw(ch)

    def add_raw(self, text):
        self.word += text
        self.in_word = True

    def add_expanded(self, text):
        for ch in text:
            self.add_char(ch)

    def finish(self):
        if self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False
        return self.words


class _Lexer:
    def __init__(self, text, variables, escape):
        self.text = text
        self.pos = 0
        self.variables = variables
        self.escape = escape

    def peek(self):
        return self.text[self.pos] if self.pos < len(self.text) else None

    def next(self):
        ch = self.peek()
        if ch is not None:
            self.pos += 1
        return ch

    def process(self, stop=None):
        """Scan until `stop` (or the end); -> (joined result, list of words)."""
        result = []
        words = _Words()
        while self.peek() is not None:
            ch = self.peek()
            if stop is not None and ch == stop:
                self.next()
                return "".join(result), words.finish()
            if ch == "'":
                piece = self.single_quoted()
                words.add_raw(piece)
            elif ch == '"':
                piece = self.double_quoted()
                words.add_raw(piece)
            elif ch == "$":
                piece = self.dollar()
                words.add_expanded(piece)
            else:
                ch = self.next()
                if ch == self.escape:
                    ch = self.next()
                    if ch is None:
                        break                  # a trailing escape character is dropped
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                piece = ch
            result.append(piece)
        if stop is not None:
            raise errors.InvalidParameter(
                f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.finish()

    def single_quoted(self):
        self.next()
        out = []
        while True:
            ch = self.next()
            if ch is None:
                raise errors.InvalidParameter(
                    "unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(out)
            out.append(ch)

    def double_quoted(self):
        self.next()
        out = []
        while True:
            ch = self.peek()
            if ch is None:
                raise errors.InvalidParameter(
                    "unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                following = self.peek()
                if following is None:
                    continue
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self):
        out = []
        while self.peek() is not None:
            ch = self.peek()
            if not out and ch.isdigit():
                return self.next()             # $1 .. $9: a one-digit positional name
            if not (ch.isalnum() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def dollar(self):
        self.next()
        if self.peek() != "{":
            name = self.name()
            if name == "":
                return "$"
            return self.variables.get(name, "")
        self.next()
        if self.peek() is None:
            raise errors.InvalidParameter("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise errors.InvalidParameter("syntax error: bad substitution")
        name = self.name()
        if name == "":
            raise errors.InvalidParameter("syntax error: bad substitution")
        ch = self.next()
        if ch == "}":
            return self.variables.get(name, "")
        colon = ch == ":"
        modifier = self.next() if colon else ch
        if modifier is None:
            raise errors.InvalidParameter("syntax error: missing '}'")
        if modifier not in ("-", "+", "?"):
            if colon:
                raise errors.InvalidParameter(f"unsupported modifier ({modifier}) in "
                                              "substitution")
            raise errors.InvalidParameter("missing ':' in substitution")
        try:
            word, _ = self.process(stop="}")
        except errors.InvalidParameter:
            if self.peek() is None:
                raise errors.InvalidParameter("syntax error: missing '}'") from None
            raise
        value = self.variables.get(name)
        # With a colon an empty value counts as unset; without one only a missing name does.
        unset = value is None or (colon and value == "")
        if modifier == "-":
            return word if unset else value
        if modifier == "+":
            return "" if unset else word
        if unset:
            raise errors.InvalidParameter(f"{name}: {word or 'parameter not set or null'}")
        return value


def expand_word(word, variables, escape="\\"):
    """Substitute variables in `word` and remove its quotes, keeping blanks: one string."""
    return _Lexer(word, variables, escape).process()[0]


def expand_words(word, variables, escape="\\"):
    """Like expand_word, but split the result on unquoted blanks (what EXPOSE does)."""
    return _Lexer(word, variables, escape).process()[1]


def substitute(instr, variables, escape="\\"):
    """The instruction with Docker's substitution applied, as a new Instruction.

    `variables` maps names to values: for FROM the meta args, elsewhere the stage's
    `Scope.variables(env)`. Instructions Docker does not expand come back unchanged.
    Substitution errors become `Dockerfile parse error line N: ...`.
    """
    if instr.cmd not in EXPANDED:
        return instr
    word = lambda w: expand_word(w, variables, escape)   # noqa: E731
    out = dataclasses.replace(instr, args=list(instr.args), flags=dict(instr.flags),
                              pairs=list(instr.pairs) if instr.pairs is not None else None)
    try:
        if instr.cmd == "EXPOSE":
            out.args = [p for arg in instr.args for p in expand_words(arg, variables, escape)]
        elif instr.cmd in ("ENV", "LABEL"):
            out.pairs = [(word(k), word(v)) for k, v in instr.pairs]
            out.args = [x for pair in out.pairs for x in pair]
        elif instr.cmd == "ARG":
            out.pairs = [(word(k), None if v is None else word(v)) for k, v in instr.pairs]
            out.args = [k if v is None else f"{k}={v}" for k, v in out.pairs]
        else:
            out.args = [word(a) for a in instr.args]
            for flag in ("chown", "chmod", "from", "platform"):
                if flag in out.flags:
                    out.flags[flag] = word(out.flags[flag])
    except errors.InvalidParameter as exc:
        raise dockerfile.parse_error(exc.message, instr.line) from None
    return out


# ---------------------------------------------------------------------------------------------
# ARG scoping
# ---------------------------------------------------------------------------------------------

class BuildArgs:
    """The build's `buildargs` and the ARGs before FROM: the build-wide half of ARG scoping.

    Rules (Docker's): a build arg only takes effect where an ARG declares it. Meta args (ARGs
    before the first FROM) are visible to FROM lines only; inside a stage, `ARG NAME` without a
    default brings the meta value in. A value given in `buildargs` beats any default. The proxy
    variables in BUILTIN_ARGS are usable without an ARG.
    """

    def __init__(self, given=None, escape="\\"):
        self.given = dict(given or {})         # name -> value (None: "declared, no value")
        self.escape = escape
        self.meta = {}                         # meta arg name -> value or None
        self.consumed = set()

    def resolve_meta(self, meta_args):
        """Evaluate the ARGs before FROM in order; -> {name: value} for those with a value,
        which is the `variables` mapping for substituting every FROM line."""
        for instr in meta_args:
            visible = {k: v for k, v in self.meta.items() if v is not None}
            instr = substitute(instr, visible, self.escape)
            for name, default in instr.pairs:
                self.consumed.add(name)
                value = self.given.get(name)
                self.meta[name] = value if value is not None else default
        return {k: v for k, v in self.meta.items() if v is not None}

    def stage_scope(self):
        """A fresh Scope for a new stage (nothing declared yet)."""
        return Scope(self)

    def unused(self):
        """Build args nobody declared, sorted: Docker warns
        `[Warning] One or more build-args [a b] were not consumed`."""
        return sorted(k for k in self.given if k not in self.consumed and k not in BUILTIN_ARGS)


class Scope:
    """The ARGs declared in one stage, combined with its ENV for substitution and RUN."""

    def __init__(self, build_args):
        self.build_args = build_args
        self.declared = {}                     # name -> value or None, in declaration order

    def declare(self, instr):
        """Apply an ARG instruction *already passed through substitute()*."""
        for name, default in instr.pairs:
            self.build_args.consumed.add(name)
            given = self.build_args.given.get(name)
            if given is not None:
                value = given
            elif default is None and name in self.build_args.meta:
                value = self.build_args.meta[name]
            else:
                value = default
            self.declared[name] = value

    def args(self):
        """The ARG values in effect, in order: declared ones with a value, then proxy args
        given to the build. (Docker's "allowed" build args.)"""
        out = {k: v for k, v in self.declared.items() if v is not None}
        for name in BUILTIN_ARGS:
            if name not in out and self.build_args.given.get(name) is not None:
                out[name] = self.build_args.given[name]
        return out

    def variables(self, env):
        """The mapping for `substitute`: ARG values, overridden by ENV (`env` is a dict or a
        list of "K=V" strings, the image config's Env)."""
        env = _env_dict(env)
        out = self.args()
        out.update(env)
        return out

    def run_env(self, env):
        """Extra "K=V" strings for a RUN container: ARG values that ENV does not override."""
        env = _env_dict(env)
        return [f"{k}={v}" for k, v in self.args().items() if k not in env]

    def history_args(self, env):
        """The ARGs a RUN's cache key and history line show (Docker's `|N K=V ... cmd`
        prefix): like run_env, minus the proxy variables, sorted by name."""
        env = _env_dict(env)
        return sorted(f"{k}={v}" for k, v in self.args().items()
                      if k not in env and k not in BUILTIN_ARGS)


def _env_dict(env):
    if isinstance(env, dict):
        return dict(env)
    out = {}
    for item in env or ():
        key, _, value = item.partition("=")
        out[key] = value
    return out
