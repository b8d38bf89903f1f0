"""Table-driven tests for minidock.dockerfile: good Dockerfiles with the structure they parse to,
bad ones with Docker's message, substitution cases, and ARG/ENV scoping across stages."""

import pytest

from minidock import buildvars, dockerfile, errors


def steps(text):
    """A compact view of every step: (CMD, args, flags, json) -- pairs where they exist."""
    out = []
    for instr in dockerfile.parse(text).steps():
        row = [instr.cmd, instr.pairs if instr.pairs is not None else instr.args]
        if instr.flags:
            row.append(instr.flags)
        if instr.json:
            row.append("json")
        out.append(tuple(row))
    return out


# (id, Dockerfile text, expected steps)
GOOD = [
    ("minimal", "FROM busybox\n", [("FROM", ["busybox"])]),
    ("case-insensitive", "from busybox\nrun echo hi\nCmd [\"sh\"]\n",
     [("FROM", ["busybox"]), ("RUN", ["echo hi"]), ("CMD", ["sh"], "json")]),
    ("comments and blanks", "# a comment\n\n   # indented comment\nFROM a\n\n# x\nRUN b\n",
     [("FROM", ["a"]), ("RUN", ["b"])]),
    ("continuation", "FROM a\nRUN echo one \\\n    two\n",
     [("FROM", ["a"]), ("RUN", ["echo one     two"])]),
    ("continuation with trailing blanks after the escape", "FROM a\nRUN x \\  \n y\n",
     [("FROM", ["a"]), ("RUN", ["x  y"])]),
    ("comment inside continuation", "FROM a\nRUN a \\\n# gone\n  # gone too\n b\n",
     [("FROM", ["a"]), ("RUN", ["a  b"])]),
    ("empty continuation line", "FROM a\nRUN a \\\n\n b\n",
     [("FROM", ["a"]), ("RUN", ["a  b"])]),
    ("continuation at end of file", "FROM a\nRUN a \\\n",
     [("FROM", ["a"]), ("RUN", ["a"])]),
    ("escape directive backtick", "# escape=`\nFROM a\nRUN dir c:\\ `\n  x\n",
     [("FROM", ["a"]), ("RUN", ["dir c:\\   x"])]),
    ("escape directive after syntax", "# syntax=docker/dockerfile:1\n#escape = `\nFROM a\nRUN a`\nb\n",
     [("FROM", ["a"]), ("RUN", ["ab"])]),
    ("directive after a blank line is a comment", "\n# escape=`\nFROM a\nRUN a \\\n b\n",
     [("FROM", ["a"]), ("RUN", ["a  b"])]),
    ("unknown directive ends the directives", "# foo=bar\n# escape=`\nFROM a\nRUN a \\\n b\n",
     [("FROM", ["a"]), ("RUN", ["a  b"])]),
    ("directive after an instruction is a comment", "FROM a\n# escape=`\nRUN a \\\n b\n",
     [("FROM", ["a"]), ("RUN", ["a  b"])]),
    ("crlf line endings", "FROM a\r\nRUN b \\\r\n c\r\n",
     [("FROM", ["a"]), ("RUN", ["b  c"])]),
    ("from as", "FROM golang:1.21 AS Build\nFROM build\n",
     [("FROM", ["golang:1.21"]), ("FROM", ["build"])]),
    ("from platform", "FROM --platform=linux/amd64 a as b\n",
     [("FROM", ["a"], {"platform": "linux/amd64"})]),
    ("meta args", "ARG V=1\nARG B\nFROM a:${V}\nARG V\n",
     [("ARG", [("V", "1")]), ("ARG", [("B", None)]), ("FROM", ["a:${V}"]), ("ARG", [("V", None)])]),
    ("arg several", "FROM a\nARG A B=2 C=\"x y\"\n",
     [("FROM", ["a"]), ("ARG", [("A", None), ("B", "2"), ("C", '"x y"')])]),
    ("run exec form", 'FROM a\nRUN ["echo", "a b"]\n',
     [("FROM", ["a"]), ("RUN", ["echo", "a b"], "json")]),
    ("run broken json is shell form", 'FROM a\nRUN [echo, hi]\n',
     [("FROM", ["a"]), ("RUN", ["[echo, hi]"])]),
    ("cmd and entrypoint", 'FROM a\nENTRYPOINT ["/bin/app"]\nCMD -h\n',
     [("FROM", ["a"]), ("ENTRYPOINT", ["/bin/app"], "json"), ("CMD", ["-h"])]),
    ("empty cmd json", "FROM a\nCMD []\n", [("FROM", ["a"]), ("CMD", [], "json")]),
    ("shell", 'FROM a\nSHELL ["/bin/bash", "-c"]\n',
     [("FROM", ["a"]), ("SHELL", ["/bin/bash", "-c"], "json")]),
    ("env new form", 'FROM a\nENV A=1 B="two words" C=a\\ b D=\n',
     [("FROM", ["a"]), ("ENV", [("A", "1"), ("B", '"two words"'), ("C", "a\\ b"), ("D", "")])]),
    ("env legacy form", "FROM a\nENV GREETING hello  big world\n",
     [("FROM", ["a"]), ("ENV", [("GREETING", "hello  big world")])]),
    ("label", 'FROM a\nLABEL "com.example.a"="x y" b=c\n',
     [("FROM", ["a"]), ("LABEL", [('"com.example.a"', '"x y"'), ("b", "c")])]),
    ("expose sorted", "FROM a\nEXPOSE 8080 80/tcp 53/udp\n",
     [("FROM", ["a"]), ("EXPOSE", ["53/udp", "80/tcp", "8080"])]),
    ("volume words", "FROM a\nVOLUME /data /logs\n", [("FROM", ["a"]), ("VOLUME", ["/data", "/logs"])]),
    ("volume json", 'FROM a\nVOLUME ["/data"]\n', [("FROM", ["a"]), ("VOLUME", ["/data"], "json")]),
    ("user workdir stopsignal maintainer", "FROM a\nUSER app:app\nWORKDIR /srv/my app\n"
     "STOPSIGNAL SIGTERM\nMAINTAINER Jane <j@x>\n",
     [("FROM", ["a"]), ("USER", ["app:app"]), ("WORKDIR", ["/srv/my app"]),
      ("STOPSIGNAL", ["SIGTERM"]), ("MAINTAINER", ["Jane <j@x>"])]),
    ("copy flags and sources", "FROM a\nCOPY --chown=1000:1000 --from=build a b* /dst/\n",
     [("FROM", ["a"]), ("COPY", ["a", "b*", "/dst/"], {"chown": "1000:1000", "from": "build"})]),
    ("copy json", 'FROM a\nCOPY ["a b", "/d/"]\n', [("FROM", ["a"]), ("COPY", ["a b", "/d/"], "json")]),
    ("add link bool", "FROM a\nADD --link x.tar /\n", [("FROM", ["a"]), ("ADD", ["x.tar", "/"], {"link": "true"})]),
    ("healthcheck none", "FROM a\nHEALTHCHECK NONE\n", [("FROM", ["a"]), ("HEALTHCHECK", ["NONE"])]),
    ("healthcheck shell", "FROM a\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/\n",
     [("FROM", ["a"]), ("HEALTHCHECK", ["CMD-SHELL", "curl -f http://x/"],
                       {"interval": "5s", "retries": "3"})]),
    ("healthcheck exec", 'FROM a\nhealthcheck cmd ["true"]\n',
     [("FROM", ["a"]), ("HEALTHCHECK", ["CMD", "true"], "json")]),
    ("onbuild", "FROM a\nONBUILD RUN echo hi\nonbuild COPY --chown=1 . /app\n",
     [("FROM", ["a"]), ("ONBUILD", ["RUN echo hi"]), ("ONBUILD", ["COPY --chown=1 . /app"])]),
    ("bom", "\ufeffFROM a\n", [("FROM", ["a"])]),
    ("no trailing newline", "FROM a\nRUN b", [("FROM", ["a"]), ("RUN", ["b"])]),
]


@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in GOOD], ids=[i for i, _, _ in GOOD])
def test_good(text, expected):
    assert steps(text) == expected


# (id, Dockerfile text, Docker's message)
BAD = [
    ("empty", "", "file with no instructions"),
    ("only comments", "# nothing\n\n", "file with no instructions"),
    ("unknown instruction", "FROM a\n\nFOO bar\n", "Dockerfile parse error line 3: unknown instruction: FOO"),
    ("before from", "RUN x\nFROM a\n", "No build stage in current context"),
    ("env before from", "ENV A=1\nFROM a\n", "No build stage in current context"),
    ("from no args", "FROM\n", "Dockerfile parse error line 1: FROM requires either one or three arguments"),
    ("from two args", "FROM a b\n", "Dockerfile parse error line 1: FROM requires either one or three arguments"),
    ("from bad stage name", "FROM a AS 1x\n",
     "Dockerfile parse error line 1: invalid name for build stage: \"1x\", name can't start with a number or contain symbols"),
    ("duplicate stage", "FROM a AS x\nFROM b AS X\n", "Dockerfile parse error line 2: duplicate stage name \"x\""),
    ("env one word", "FROM a\nENV A\n", "Dockerfile parse error line 2: ENV must have two arguments"),
    ("env no args", "FROM a\nENV\n", "Dockerfile parse error line 2: ENV requires at least one argument"),
    ("env missing =", "FROM a\nENV A=1 B\n",
     'Dockerfile parse error line 2: Syntax error - can\'t find = in "B". Must be of the form: name=value'),
    ("env blank name", "FROM a\nENV =1\n", "Dockerfile parse error line 2: ENV names can not be blank"),
    ("label one word", "FROM a\nLABEL x\n", "Dockerfile parse error line 2: LABEL must have two arguments"),
    ("arg blank", "FROM a\nARG =x\n", "Dockerfile parse error line 2: ARG names can not be blank"),
    ("arg none", "FROM a\nARG\n", "Dockerfile parse error line 2: ARG requires at least one argument"),
    ("copy one arg", "FROM a\nCOPY x\n",
     "Dockerfile parse error line 2: COPY requires at least two arguments, but only one was provided. Destination could not be determined"),
    ("add one arg", "FROM a\nADD x\n",
     "Dockerfile parse error line 2: ADD requires at least two arguments, but only one was provided. Destination could not be determined"),
    ("copy unknown flag", "FROM a\nCOPY --foo=1 a b\n", "Dockerfile parse error line 2: Unknown flag: foo"),
    ("copy flag no value", "FROM a\nCOPY --from a b\n", "Dockerfile parse error line 2: Missing a value on flag: from"),
    ("copy duplicate flag", "FROM a\nCOPY --from=a --from=b a b\n",
     "Dockerfile parse error line 2: Duplicate flag specified: from"),
    ("bool flag value", "FROM a\nCOPY --link=maybe a b\n",
     "Dockerfile parse error line 2: Expecting boolean value for flag link, not: maybe"),
    ("run mount needs buildkit", "FROM a\nRUN --mount=type=cache,target=/x true\n",
     "Dockerfile parse error line 2: Unknown flag: mount"),
    ("leading -- words are flags, as in Docker", "FROM a\nCMD --help\n",
     "Dockerfile parse error line 2: Unknown flag: help"),
    ("json non-string", "FROM a\nCMD [\"a\", 1]\n",
     "Dockerfile parse error line 2: when using JSON array syntax, arrays must be comprised of strings only"),
    ("shell not json", "FROM a\nSHELL /bin/sh -c\n",
     "Dockerfile parse error line 2: SHELL requires the arguments to be in JSON form"),
    ("shell empty", "FROM a\nSHELL []\n", "Dockerfile parse error line 2: SHELL requires at least one argument"),
    ("user none", "FROM a\nUSER\n", "Dockerfile parse error line 2: USER requires exactly one argument"),
    ("workdir none", "FROM a\nWORKDIR\n", "Dockerfile parse error line 2: WORKDIR requires exactly one argument"),
    ("expose none", "FROM a\nEXPOSE\n", "Dockerfile parse error line 2: EXPOSE requires at least one argument"),
    ("volume none", "FROM a\nVOLUME\n", "Dockerfile parse error line 2: VOLUME requires at least one argument"),
    ("volume empty json", "FROM a\nVOLUME [\"\"]\n",
     "Dockerfile parse error line 2: VOLUME specified can not be an empty string"),
    ("onbuild onbuild", "FROM a\nONBUILD ONBUILD RUN x\n",
     "Dockerfile parse error line 2: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("onbuild from", "FROM a\nONBUILD FROM b\n", "Dockerfile parse error line 2: FROM isn't allowed as an ONBUILD trigger"),
    ("onbuild maintainer", "FROM a\nONBUILD maintainer b\n",
     "Dockerfile parse error line 2: MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("onbuild empty", "FROM a\nONBUILD\n", "Dockerfile parse error line 2: ONBUILD requires at least one argument"),
    ("onbuild unknown", "FROM a\nONBUILD BOGUS x\n", "Dockerfile parse error line 2: unknown instruction: BOGUS"),
    ("healthcheck none args", "FROM a\nHEALTHCHECK NONE x\n",
     "Dockerfile parse error line 2: HEALTHCHECK NONE takes no arguments"),
    ("healthcheck bad type", "FROM a\nHEALTHCHECK RUN x\n",
     'Dockerfile parse error line 2: Unknown type "RUN" in HEALTHCHECK (try CMD)'),
    ("healthcheck no cmd", "FROM a\nHEALTHCHECK CMD\n",
     "Dockerfile parse error line 2: Missing command after HEALTHCHECK CMD"),
    ("healthcheck bad duration", "FROM a\nHEALTHCHECK --interval=5 CMD true\n",
     'Dockerfile parse error line 2: time: missing unit in duration "5"'),
    ("healthcheck tiny duration", "FROM a\nHEALTHCHECK --timeout=1us CMD true\n",
     'Dockerfile parse error line 2: Interval "timeout" cannot be less than 1ms'),
    ("healthcheck negative retries", "FROM a\nHEALTHCHECK --retries=-1 CMD true\n",
     "Dockerfile parse error line 2: --retries cannot be negative (-1)"),
    ("healthcheck unknown flag", "FROM a\nHEALTHCHECK --foo=1 CMD true\n",
     "Dockerfile parse error line 2: Unknown flag: foo"),
    ("two escape directives", "# escape=`\n# escape=\\\nFROM a\n",
     "Dockerfile parse error line 2: only one escape parser directive can be used"),
    ("bad escape", "# escape=x\nFROM a\n",
     "Dockerfile parse error line 1: invalid escape token 'x' does not match ` or \\"),
    ("line number after continuation", "FROM a\nRUN a \\\n b\nNOPE\n",
     "Dockerfile parse error line 4: unknown instruction: NOPE"),
]


@pytest.mark.parametrize("text,message", [(t, m) for _, t, m in BAD], ids=[i for i, _, _ in BAD])
def test_bad(text, message):
    with pytest.raises(errors.InvalidParameter) as info:
        dockerfile.parse(text)
    assert info.value.message == message


def test_structure_of_a_multistage_file():
    df = dockerfile.parse(
        "# syntax=docker/dockerfile:1\n"
        "ARG GO=1.21\n"
        "FROM golang:${GO} AS build\n"
        "WORKDIR /src\n"
        "COPY . .\n"
        "RUN go build -o /out/app \\\n"
        "      ./cmd/app\n"
        "\n"
        "FROM scratch\n"
        "COPY --from=build /out/app /app\n"
        "ENTRYPOINT [\"/app\"]\n")
    assert df.syntax == "docker/dockerfile:1" and df.escape == "\\"
    assert [s.name for s in df.stages] == ["build", None]
    assert df.stage("build") is df.stages[0] and df.stage("0") is df.stages[0]
    assert df.stage(1) is df.stages[1] and df.stage("nope") is None
    assert df.stages[0].base == "golang:${GO}"
    run = df.stages[0].instructions[2]
    assert (run.line, run.end_line) == (6, 7)
    assert str(run) == "RUN go build -o /out/app       ./cmd/app"
    assert [str(i) for i in df.steps()][:3] == ["ARG GO=1.21", "FROM golang:${GO} AS build",
                                               "WORKDIR /src"]
    assert len(df.steps()) == 8                # what `Step N/8` counts
    assert df.warnings == []


def test_empty_continuation_warns():
    df = dockerfile.parse("FROM a\nRUN a \\\n\n b\n")
    assert df.warnings[0] == "[WARNING]: Empty continuation line found in:\n    RUN a  b"
    assert "future release" in df.warnings[-1]


def test_onbuild_trigger_and_parse_instruction():
    df = dockerfile.parse("FROM a\nONBUILD ADD --chown=1:1 . /app/src\n")
    onbuild = df.stages[0].instructions[0]
    assert onbuild.args == ["ADD --chown=1:1 . /app/src"]     # what goes in the image's OnBuild
    trig = onbuild.trigger
    assert (trig.cmd, trig.args, trig.flags) == ("ADD", [".", "/app/src"], {"chown": "1:1"})
    again = dockerfile.parse_instruction(onbuild.args[0])
    assert (again.cmd, again.args) == ("ADD", [".", "/app/src"])


def test_command_argv_and_healthcheck_config():
    df = dockerfile.parse('FROM a\nRUN echo $HOME\nCMD ["a", "b"]\nENTRYPOINT []\n'
                          'HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2s '
                          '--retries=4 CMD wget -q x\n')
    run, cmd, entry, health = df.stages[0].instructions
    assert dockerfile.command_argv(run) == ["/bin/sh", "-c", "echo $HOME"]
    assert dockerfile.command_argv(run, ["/bin/bash", "-xc"]) == ["/bin/bash", "-xc", "echo $HOME"]
    assert dockerfile.command_argv(cmd) == ["a", "b"]
    assert dockerfile.command_argv(entry) == []
    assert dockerfile.healthcheck_config(health) == {
        "Test": ["CMD-SHELL", "wget -q x"], "Interval": 90 * 10**9, "Timeout": 500 * 10**6,
        "StartPeriod": 2 * 10**9, "Retries": 4}
    assert dockerfile.healthcheck_config(dockerfile.parse_instruction("HEALTHCHECK NONE")) == \
        {"Test": ["NONE"]}


# ---------------------------------------------------------------------------------------------
# Substitution
# ---------------------------------------------------------------------------------------------

VARS = {"A": "a", "EMPTY": "", "SP": "x y", "PATH": "/bin"}

# (word, expected expand_word result)
WORDS = [
    ("$A", "a"),
    ("${A}", "a"),
    ("pre${A}post", "preapost"),
    ("$A$A", "aa"),
    ("$UNSET", ""),
    ("${UNSET:-def}", "def"),
    ("${EMPTY:-def}", "def"),
    ("${A:-def}", "a"),
    ("${UNSET-def}", "def"),
    ("${EMPTY-def}", ""),
    ("${A:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${UNSET:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET:-${A}b}", "ab"),
    ("${UNSET:-'q $A'}", "q $A"),
    ("\\$A", "$A"),
    ("\\${A}", "${A}"),
    ("'$A'", "$A"),
    ('"$A"', "a"),
    ('"\\$A"', "$A"),
    ('"a\\"b"', 'a"b'),
    ('"a\\nb"', "a\\nb"),             # inside double quotes only " $ and \ are escapable
    ("a\\ b", "a b"),
    ("'a b'c", "a bc"),
    ("$", "$"),
    ("a$", "a$"),
    ("$ a", "$ a"),
    ("$1x", "x"),
    ("${PATH}:/usr/bin", "/bin:/usr/bin"),
    ("$A-$A", "a-a"),
    ("trail\\", "trail"),
]


@pytest.mark.parametrize("word,expected", WORDS)
def test_expand_word(word, expected):
    assert buildvars.expand_word(word, VARS) == expected


@pytest.mark.parametrize("word,expected", [
    ("$SP", ["x", "y"]),
    ('"$SP"', ["x y"]),
    ("80 $SP", ["80", "x", "y"]),
    ("'a b' c", ["a b", "c"]),
    ('""', []),
])
def test_expand_words(word, expected):
    assert buildvars.expand_words(word, VARS) == expected


def test_expand_with_backtick_escape():
    assert buildvars.expand_word("`$A", VARS, escape="`") == "$A"
    assert buildvars.expand_word("c:\\$A", VARS, escape="`") == "c:\\a"


@pytest.mark.parametrize("word,message", [
    ("${A", "syntax error: missing '}'"),
    ("${", "syntax error: missing '}'"),
    ("${}", "syntax error: bad substitution"),
    ("${:-x}", "syntax error: bad substitution"),
    ("${A:=x}", "unsupported modifier (=) in substitution"),
    ("${A!}", "missing ':' in substitution"),
    ("'open", "unexpected end of statement while looking for matching single-quote"),
    ('"open', "unexpected end of statement while looking for matching double-quote"),
    ("${UNSET:?must be set}", "UNSET: must be set"),
])
def test_expand_errors(word, message):
    with pytest.raises(errors.InvalidParameter) as info:
        buildvars.expand_word(word, VARS)
    assert info.value.message == message


def sub(line, variables):
    return buildvars.substitute(dockerfile.parse_instruction(line), variables)


def test_substitute_per_instruction():
    v = {"D": "/data", "P": "80 443", "U": "app", "N": "name", "SRC": "src"}
    assert sub("WORKDIR $D/x", v).args == ["/data/x"]
    assert sub("USER ${U}:${U}", v).args == ["app:app"]
    assert sub("EXPOSE $P 22", v).args == ["80", "443", "22"]
    assert sub("VOLUME $D /y", v).args == ["/data", "/y"]
    assert sub('VOLUME ["$D"]', v).args == ["/data"]
    assert sub("STOPSIGNAL ${SIG:-SIGQUIT}", v).args == ["SIGQUIT"]
    env = sub('ENV $N=$D OTHER="a $U" LIT=\'$U\'', v)
    assert env.pairs == [("name", "/data"), ("OTHER", "a app"), ("LIT", "$U")]
    assert env.args == ["name", "/data", "OTHER", "a app", "LIT", "$U"]
    assert sub("ENV K $U and  more", v).pairs == [("K", "app and  more")]
    assert sub('LABEL "k"="v $U"', v).pairs == [("k", "v app")]
    assert sub("ARG X=$D Y", v).pairs == [("X", "/data"), ("Y", None)]
    copy = sub("COPY --chown=$U:$U --from=$N $SRC/* /dst/", v)
    assert copy.args == ["src/*", "/dst/"] and copy.flags == {"chown": "app:app", "from": "name"}
    assert sub("FROM --platform=$PL busybox:${TAG:-latest}", {"PL": "linux/amd64"}).args == \
        ["busybox:latest"]
    # Not expanded: left for the shell in the container, or stored as written.
    for line in ("RUN echo $D", "CMD echo $D", 'ENTRYPOINT ["$D"]', "ONBUILD RUN echo $D",
                 "HEALTHCHECK CMD test -d $D", "MAINTAINER $U"):
        instr = dockerfile.parse_instruction(line)
        assert buildvars.substitute(instr, v) is instr


def test_substitute_error_names_line():
    instr = dockerfile.parse("FROM a\n\nWORKDIR ${D\n").stages[0].instructions[0]
    with pytest.raises(errors.InvalidParameter) as info:
        buildvars.substitute(instr, {})
    assert info.value.message == "Dockerfile parse error line 3: syntax error: missing '}'"


# ---------------------------------------------------------------------------------------------
# ARG / ENV scoping, driven the way the builder drives it
# ---------------------------------------------------------------------------------------------

def run_build(text, given, image_env=()):
    """Walk a Dockerfile like a builder: -> (FROM images, per-stage final variables, run envs)."""
    df = dockerfile.parse(text)
    args = buildvars.BuildArgs(given, df.escape)
    meta = args.resolve_meta(df.meta_args)
    froms, finals, run_envs = [], [], []
    for stage in df.stages:
        froms.append(buildvars.substitute(stage.from_, meta, df.escape).args[0])
        scope = args.stage_scope()
        env = dict(kv.split("=", 1) for kv in image_env)
        for instr in stage.instructions:
            instr = buildvars.substitute(instr, scope.variables(env), df.escape)
            if instr.cmd == "ARG":
                scope.declare(instr)
            elif instr.cmd == "ENV":
                env.update(instr.pairs)
            elif instr.cmd == "RUN":
                run_envs.append(scope.run_env(env))
        finals.append(scope.variables(env))
    return froms, finals, run_envs, args


def test_meta_args_only_visible_to_from():
    text = ("ARG TAG=1.0\nARG BASE=busybox\nFROM $BASE:$TAG\nENV SEEN=${TAG:-unset}\n"
            "FROM alpine\nARG TAG\nENV SEEN=$TAG\n")
    froms, finals, _, _ = run_build(text, {})
    assert froms == ["busybox:1.0", "alpine"]
    assert finals[0] == {"SEEN": "unset"}                      # not redeclared: invisible
    assert finals[1] == {"TAG": "1.0", "SEEN": "1.0"}          # bare ARG brings the meta value


def test_build_args_override_defaults_and_meta():
    text = "ARG TAG=1.0\nFROM busybox:$TAG\nARG TAG\nARG X=default\nARG Y=keep\n"
    froms, finals, _, args = run_build(text, {"TAG": "2.0", "X": "given", "UNUSED": "1"})
    assert froms == ["busybox:2.0"]
    assert finals[0] == {"TAG": "2.0", "X": "given", "Y": "keep"}
    assert args.unused() == ["UNUSED"]


def test_meta_arg_default_refers_to_earlier_meta_arg():
    froms, _, _, _ = run_build("ARG V=1\nARG IMG=app:$V\nFROM $IMG\n", {"V": "7"})
    assert froms == ["app:7"]


def test_env_beats_arg_and_run_env():
    text = ("FROM a\nARG A=fromarg\nARG B=b\nARG NOVAL\nENV A=fromenv\nRUN x\n"
            "ENV C=${B}-${A}\n")
    _, finals, run_envs, _ = run_build(text, {"http_proxy": "http://p:3128"})
    assert finals[0]["A"] == "fromenv" and finals[0]["C"] == "b-fromenv"
    assert "NOVAL" not in finals[0]
    assert run_envs == [["B=b", "http_proxy=http://p:3128"]]   # A is ENV's; proxies pass through


def test_args_are_scoped_per_stage():
    text = "FROM a\nARG X=1\nFROM b\nENV Y=${X:-none}\n"
    _, finals, _, _ = run_build(text, {})
    assert finals == [{"X": "1"}, {"Y": "none"}]


def test_image_env_visible_and_history_args():
    df = dockerfile.parse("FROM a\nARG V=1\nARG https_proxy\nRUN x\n")
    args = buildvars.BuildArgs({"https_proxy": "secret"})
    scope = args.stage_scope()
    for instr in df.stages[0].instructions[:2]:
        scope.declare(buildvars.substitute(instr, scope.variables(["PATH=/bin"])))
    assert scope.variables(["PATH=/bin"]) == {"V": "1", "https_proxy": "secret", "PATH": "/bin"}
    assert scope.history_args(["PATH=/bin"]) == ["V=1"]         # proxies never reach history
    assert args.unused() == []
